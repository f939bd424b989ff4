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
    -- Unix seconds the counted budget period started, the tokens used in it, and the tokens
    -- reserved in it by requests in flight.
    budget_start BIGINT,
    budget_used  BIGINT NOT NULL DEFAULT 0,
    reserved     BIGINT NOT NULL DEFAULT 0,
    -- Grants (rows below) held: requests in flight.
    in_flight    BIGINT NOT NULL DEFAULT 0
);

-- One row per (request in flight, subject with a parallel limit or a budget): its slot and
-- its budget reservation, also counted in admission_state. A row is a lease: the server
-- holding the request renews it; a server that dies stops renewing, and the next admission
-- of that subject past expires_us reclaims the row (and its counts).
CREATE UNLOGGED TABLE admission_grants (
    subject      TEXT NOT NULL,
    grant_id     TEXT NOT NULL,
    cost         BIGINT NOT NULL,
    budget_start BIGINT,
    expires_us   BIGINT NOT NULL,
    PRIMARY KEY (subject, grant_id)
);
CREATE INDEX admission_grants_id ON admission_grants(grant_id);
CREATE INDEX admission_grants_expiry ON admission_grants(subject, expires_us);

-- Checks every subject (a JSON array, the key first, then its tenant: state rows are locked
-- in that order everywhere, so two calls cannot deadlock) for a request of p_cost tokens
-- and, only if all pass, debits them all and records the grant. One call, one statement,
-- one transaction. Returns a JSON object: ok, held (grant rows written: 0 means there is
-- nothing to release but unused tokens), and on refusal the subject's index, the reason
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
    sts admission_state[] := '{}';
    g record;
    sid text;
    rpm bigint; tpm bigint; maxp bigint; budget bigint; bstart bigint; bend bigint;
    step bigint; next_tat bigint; lvl double precision;
    reserved bigint; used bigint;
    useds bigint[] := '{}';
    held int := 0;
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
        IF maxp IS NOT NULL OR budget IS NOT NULL THEN
            -- Leases past their time belong to a server that died: reclaim them.
            FOR g IN DELETE FROM admission_grants
                      WHERE subject = sid AND expires_us <= now_us RETURNING cost, budget_start LOOP
                st.in_flight := greatest(st.in_flight - 1, 0);
                IF g.budget_start = st.budget_start THEN
                    st.reserved := greatest(st.reserved - g.cost, 0);
                END IF;
            END LOOP;
        END IF;
        used := 0;
        IF refusal IS NULL AND budget IS NOT NULL THEN
            IF st.budget_start IS DISTINCT FROM bstart THEN
                -- A new period (or the first request): start from the ledger's day rollups.
                SELECT coalesce(sum(input_tokens + output_tokens), 0)::bigint INTO used
                  FROM usage_rollups
                 WHERE width = '1d' AND bucket_start >= bstart AND bucket_start < bend
                   AND (CASE WHEN s ->> 'kind' = 'tenant' THEN tenant_id ELSE key_id END) = sid;
                reserved := 0;
            ELSE
                used := st.budget_used;
                reserved := st.reserved;
            END IF;
            IF used + reserved + p_cost > budget THEN
                refusal := jsonb_build_object('subject', i, 'reason', 'budget', 'limit', budget,
                    'used', used, 'reserved', reserved);
            END IF;
        END IF;
        useds := useds || used;
        IF refusal IS NULL AND maxp IS NOT NULL AND st.in_flight >= maxp THEN
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
        IF st.tokens IS NOT NULL AND tpm IS NOT NULL THEN
            st.tokens := least(tpm, st.tokens
                + greatest(now_us - st.tokens_at_us, 0)::double precision * tpm / minute);
            st.tokens_at_us := now_us;
        END IF;
        IF refusal IS NULL AND tpm IS NOT NULL THEN
            lvl := coalesce(st.tokens, tpm);
            IF p_cost > lvl THEN
                refusal := jsonb_build_object('subject', i, 'reason', 'tpm', 'limit', tpm,
                    'wait_us', ceil((p_cost - lvl) * minute / tpm)::bigint);
            END IF;
        END IF;
        sts := sts || st;
    END LOOP;

    FOR i IN 0 .. n - 1 LOOP
        s := p_subjects -> i;
        st := sts[i + 1];
        rpm := (s ->> 'rpm')::bigint; tpm := (s ->> 'tpm')::bigint;
        maxp := (s ->> 'max_parallel')::bigint;
        budget := (s ->> 'budget')::bigint; bstart := (s ->> 'budget_start')::bigint;
        IF refusal IS NULL THEN
            -- Every check passed: debit everything.
            IF rpm IS NOT NULL THEN
                st.tat_us := greatest(st.tat_us, now_us) + greatest(minute / rpm, 1);
            END IF;
            IF tpm IS NOT NULL THEN
                st.tokens := coalesce(st.tokens, tpm) - p_cost;
                st.tokens_at_us := now_us;
            END IF;
            IF budget IS NOT NULL THEN
                IF st.budget_start IS DISTINCT FROM bstart THEN
                    st.reserved := 0;
                END IF;
                st.budget_start := bstart;
                st.budget_used := useds[i + 1];
                st.reserved := st.reserved + p_cost;
            END IF;
            IF maxp IS NOT NULL OR budget IS NOT NULL THEN
                st.in_flight := st.in_flight + 1;
                INSERT INTO admission_grants (subject, grant_id, cost, budget_start, expires_us)
                VALUES (st.subject, p_grant, p_cost,
                        CASE WHEN budget IS NULL THEN NULL ELSE bstart END, now_us + p_lease_us);
                held := held + 1;
            END IF;
        END IF;
        UPDATE admission_state SET tat_us = st.tat_us, tokens = st.tokens,
            tokens_at_us = st.tokens_at_us, budget_start = st.budget_start,
            budget_used = st.budget_used, reserved = st.reserved, in_flight = st.in_flight
        WHERE subject = st.subject;
        -- The header views, after the debit.
        IF snap_rpm IS NULL AND rpm IS NOT NULL THEN
            step := greatest(minute / rpm, 1);
            snap_rpm := jsonb_build_object('limit', rpm,
                'remaining', least(rpm, greatest(minute - greatest(st.tat_us - now_us, 0), 0) / step),
                'reset_us', greatest(st.tat_us - now_us, 0));
        END IF;
        IF snap_tpm IS NULL AND tpm IS NOT NULL THEN
            lvl := coalesce(st.tokens, tpm);
            snap_tpm := jsonb_build_object('limit', tpm,
                'remaining', greatest(floor(lvl), 0)::bigint,
                'reset_us', ceil(greatest(tpm - lvl, 0) * minute / tpm)::bigint);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('ok', refusal IS NULL, 'held', held, 'refusal', refusal,
        'rpm', snap_rpm, 'tpm', snap_tpm)::text;
END
$$;

-- Ends grant p_grant of p_cost tokens, of which p_used were used: frees its slots, adds what
-- it used to the budget period it was charged to, and refunds the rest to the token buckets
-- of p_refunds (a JSON array of {"id", "tpm"}: its subjects with tokens per minute). Grant
-- rows already reclaimed as expired are not counted twice: only rows this call deletes are.
CREATE FUNCTION lumen_release(p_grant text, p_used bigint, p_cost bigint, p_refunds jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    minute CONSTANT bigint := 60000000;
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    g record;
    r jsonb;
    tpm bigint;
    unused bigint := greatest(p_cost - p_used, 0);
    k bigint := 0;
BEGIN
    -- Lock the state rows first, in lumen_admit's order (keys sort before tenants), then take
    -- the grant rows: a concurrent reclaim holds the state row before it touches a grant.
    PERFORM 1 FROM admission_state
     WHERE subject IN (SELECT subject FROM admission_grants WHERE grant_id = p_grant
                       UNION SELECT jsonb_array_elements(p_refunds) ->> 'id')
     ORDER BY subject FOR UPDATE;
    FOR g IN DELETE FROM admission_grants WHERE grant_id = p_grant RETURNING * LOOP
        UPDATE admission_state SET
            in_flight = greatest(in_flight - 1, 0),
            reserved = CASE WHEN budget_start = g.budget_start
                            THEN greatest(reserved - g.cost, 0) ELSE reserved END,
            budget_used = CASE WHEN budget_start = g.budget_start
                               THEN budget_used + least(p_used, g.cost) ELSE budget_used END
        WHERE subject = g.subject;
        k := k + 1;
    END LOOP;
    IF unused > 0 THEN
        FOR r IN SELECT * FROM jsonb_array_elements(p_refunds) LOOP
            tpm := (r ->> 'tpm')::bigint;
            UPDATE admission_state SET
                tokens = least(tpm, tokens
                    + greatest(now_us - tokens_at_us, 0)::double precision * tpm / minute + unused),
                tokens_at_us = now_us
            WHERE subject = r ->> 'id' AND tokens IS NOT NULL;
        END LOOP;
    END IF;
    RETURN k;
END
$$;
