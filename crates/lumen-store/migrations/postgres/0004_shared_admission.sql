-- Admission state shared by every server on this database (PostgreSQL only: a SQLite file
-- serves one process, which keeps its limits in memory).
--
-- One row per limited key or tenant: the GCRA time for requests per minute, the token
-- bucket for tokens per minute, and the budget period's tokens used. Times are microseconds
-- on the database's clock, so replicas with skewed clocks still agree.
--
-- Both tables are UNLOGGED: no write-ahead log, so an admission costs no WAL flush. A
-- database crash (or a failover) empties them, which only forgets the last minute's rate
-- state and the slots in flight; budgets reload from the (logged) usage rollups, because an
-- empty row has no budget period yet.
CREATE UNLOGGED TABLE admission_state (
    subject      TEXT PRIMARY KEY,
    tat_us       BIGINT NOT NULL DEFAULT 0,
    -- Tokens in the bucket at tokens_at_us; NULL is a full bucket.
    tokens       DOUBLE PRECISION,
    tokens_at_us BIGINT NOT NULL DEFAULT 0,
    -- Unix seconds the counted budget period started, and the tokens used in it.
    budget_start BIGINT,
    budget_used  BIGINT NOT NULL DEFAULT 0
);

-- One row per (request in flight, subject): its slot and its budget reservation. A row is a
-- lease: the server holding the request renews it; a server that dies stops renewing, and
-- once expires_us passes the row counts for nothing (and is deleted by the next admission).
CREATE UNLOGGED TABLE admission_grants (
    subject      TEXT NOT NULL,
    grant_id     TEXT NOT NULL,
    cost         BIGINT NOT NULL,
    tpm          BIGINT,
    budget_start BIGINT,
    expires_us   BIGINT NOT NULL,
    PRIMARY KEY (subject, grant_id)
);
CREATE INDEX admission_grants_id ON admission_grants(grant_id);

-- Checks every subject (a JSON array, the key first, then its tenant: rows are locked in
-- that order everywhere, so two calls cannot deadlock) for a request of p_cost tokens and,
-- only if all pass, debits them all and records the grant. One call, one statement, one
-- transaction. Returns a JSON object: ok, and on refusal the subject's index, the reason
-- (budget, parallel, rpm, tpm) and what the message needs; always the rpm and tpm views of
-- the first subject limiting each (for the x-ratelimit-* headers).
CREATE FUNCTION lumen_admit(p_subjects jsonb, p_grant text, p_cost bigint, p_lease_us bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    minute CONSTANT bigint := 60000000;
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    n int := jsonb_array_length(p_subjects);
    s jsonb;
    st admission_state%ROWTYPE;
    sid text;
    rpm bigint; tpm bigint; maxp bigint; budget bigint; bstart bigint; bend bigint;
    step bigint; next_tat bigint; lvl double precision;
    live bigint; reserved bigint; used bigint;
    useds bigint[] := '{}';
    refusal jsonb := NULL;
    snap_rpm jsonb := NULL; snap_tpm jsonb := NULL;
BEGIN
    FOR i IN 0 .. n - 1 LOOP
        s := p_subjects -> i;
        sid := s ->> 'id';
        rpm := (s ->> 'rpm')::bigint; tpm := (s ->> 'tpm')::bigint;
        maxp := (s ->> 'max_parallel')::bigint; budget := (s ->> 'budget')::bigint;
        bstart := (s ->> 'budget_start')::bigint; bend := (s ->> 'budget_end')::bigint;
        -- Creates the row if missing and locks it, in one statement.
        INSERT INTO admission_state AS a (subject) VALUES (sid)
            ON CONFLICT (subject) DO UPDATE SET subject = a.subject
            RETURNING * INTO st;
        used := 0;
        IF maxp IS NOT NULL OR budget IS NOT NULL THEN
            DELETE FROM admission_grants WHERE subject = sid AND expires_us <= now_us;
            SELECT count(*), coalesce(sum(cost) FILTER (WHERE budget_start = bstart), 0)
              INTO live, reserved FROM admission_grants WHERE subject = sid;
        END IF;
        IF refusal IS NULL AND budget IS NOT NULL THEN
            IF st.budget_start IS DISTINCT FROM bstart THEN
                -- A new period (or the first request): start from the ledger's day rollups.
                SELECT coalesce(sum(input_tokens + output_tokens), 0)::bigint INTO used
                  FROM usage_rollups
                 WHERE width = '1d' AND bucket_start >= bstart AND bucket_start < bend
                   AND (CASE WHEN s ->> 'kind' = 'tenant' THEN tenant_id ELSE key_id END) = sid;
            ELSE
                used := st.budget_used;
            END IF;
            IF used + reserved + p_cost > budget THEN
                refusal := jsonb_build_object('subject', i, 'reason', 'budget', 'limit', budget,
                    'used', used, 'reserved', reserved);
            END IF;
        END IF;
        useds := useds || used;
        IF refusal IS NULL AND maxp IS NOT NULL AND live >= maxp THEN
            refusal := jsonb_build_object('subject', i, 'reason', 'parallel', 'limit', maxp);
        END IF;
        IF refusal IS NULL AND rpm IS NOT NULL THEN
            step := greatest(minute / rpm, 1);
            next_tat := greatest(st.tat_us, now_us) + step;
            IF next_tat - now_us > minute THEN
                refusal := jsonb_build_object('subject', i, 'reason', 'rpm', 'limit', rpm,
                    'wait_us', next_tat - now_us - minute);
            END IF;
        END IF;
        IF refusal IS NULL AND tpm IS NOT NULL THEN
            lvl := CASE WHEN st.tokens IS NULL THEN tpm
                   ELSE least(tpm, st.tokens + greatest(now_us - st.tokens_at_us, 0)::double precision * tpm / minute) END;
            IF p_cost > lvl THEN
                refusal := jsonb_build_object('subject', i, 'reason', 'tpm', 'limit', tpm,
                    'wait_us', ceil((p_cost - lvl) * minute / tpm)::bigint);
            END IF;
        END IF;
    END LOOP;

    IF refusal IS NULL THEN
        -- Every check passed: debit everything.
        FOR i IN 0 .. n - 1 LOOP
            s := p_subjects -> i;
            sid := s ->> 'id';
            rpm := (s ->> 'rpm')::bigint; tpm := (s ->> 'tpm')::bigint;
            budget := (s ->> 'budget')::bigint; bstart := (s ->> 'budget_start')::bigint;
            UPDATE admission_state SET
                tat_us = CASE WHEN rpm IS NULL THEN tat_us
                              ELSE greatest(tat_us, now_us) + greatest(minute / rpm, 1) END,
                tokens = CASE WHEN tpm IS NULL THEN tokens
                              ELSE (CASE WHEN tokens IS NULL THEN tpm
                                    ELSE least(tpm, tokens + greatest(now_us - tokens_at_us, 0)::double precision * tpm / minute) END) - p_cost END,
                tokens_at_us = CASE WHEN tpm IS NULL THEN tokens_at_us ELSE now_us END,
                budget_used = CASE WHEN budget IS NULL THEN budget_used ELSE useds[i + 1] END,
                budget_start = CASE WHEN budget IS NULL THEN budget_start ELSE bstart END
            WHERE subject = sid;
            INSERT INTO admission_grants (subject, grant_id, cost, tpm, budget_start, expires_us)
            VALUES (sid, p_grant, p_cost, tpm, CASE WHEN budget IS NULL THEN NULL ELSE bstart END,
                    now_us + p_lease_us);
        END LOOP;
    END IF;

    -- The header views, after the debit.
    FOR i IN 0 .. n - 1 LOOP
        s := p_subjects -> i;
        rpm := (s ->> 'rpm')::bigint; tpm := (s ->> 'tpm')::bigint;
        SELECT * INTO st FROM admission_state WHERE subject = s ->> 'id';
        IF snap_rpm IS NULL AND rpm IS NOT NULL THEN
            step := greatest(minute / rpm, 1);
            snap_rpm := jsonb_build_object('limit', rpm,
                'remaining', least(rpm, greatest(minute - greatest(st.tat_us - now_us, 0), 0) / step),
                'reset_us', greatest(st.tat_us - now_us, 0));
        END IF;
        IF snap_tpm IS NULL AND tpm IS NOT NULL THEN
            lvl := CASE WHEN st.tokens IS NULL THEN tpm
                   ELSE least(tpm, st.tokens + greatest(now_us - st.tokens_at_us, 0)::double precision * tpm / minute) END;
            snap_tpm := jsonb_build_object('limit', tpm,
                'remaining', greatest(floor(lvl), 0)::bigint,
                'reset_us', ceil(greatest(tpm - lvl, 0) * minute / tpm)::bigint);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('ok', refusal IS NULL, 'refusal', refusal,
        'rpm', snap_rpm, 'tpm', snap_tpm)::text;
END
$$;

-- Ends grant p_grant: frees its slots, refunds the tokens it reserved and did not use to the
-- token buckets, and adds what it used to the budget period it was charged to.
CREATE FUNCTION lumen_release(p_grant text, p_used bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    minute CONSTANT bigint := 60000000;
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    g admission_grants%ROWTYPE;
    k bigint := 0;
BEGIN
    -- The same lock order as lumen_admit (subjects sorted: keys before tenants).
    FOR g IN SELECT * FROM admission_grants WHERE grant_id = p_grant ORDER BY subject LOOP
        UPDATE admission_state SET
            tokens = CASE WHEN g.tpm IS NULL OR tokens IS NULL THEN tokens
                     ELSE least(g.tpm, tokens + greatest(now_us - tokens_at_us, 0)::double precision * g.tpm / minute
                                + greatest(g.cost - p_used, 0)) END,
            tokens_at_us = CASE WHEN g.tpm IS NULL OR tokens IS NULL THEN tokens_at_us ELSE now_us END,
            budget_used = CASE WHEN g.budget_start IS NOT NULL AND budget_start = g.budget_start
                          THEN budget_used + least(p_used, g.cost) ELSE budget_used END
        WHERE subject = g.subject;
        k := k + 1;
    END LOOP;
    DELETE FROM admission_grants WHERE grant_id = p_grant;
    RETURN k;
END
$$;
