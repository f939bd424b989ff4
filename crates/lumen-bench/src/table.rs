//! Plain-text tables for the reports (markdown-style, like llama-bench's default output).

use crate::model_bench::ModelBenchReport;
use crate::serve::ServeReport;
use crate::stats::Percentiles;

/// Renders rows under a header as a markdown table with aligned columns; numbers go right.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().take(n).enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let numeric = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+')
    };
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = (0..n)
            .map(|i| {
                let c = cells.get(i).cloned().unwrap_or_default();
                let pad = width[i].saturating_sub(c.chars().count());
                if numeric(&c) {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out.push_str(&format!(
        "|{}|",
        width
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out.push('\n');
    out
}

/// The table `lumen bench MODEL` prints.
pub fn model_table(r: &ModelBenchReport) -> String {
    let mut out = format!(
        "model: {} ({}, {:.1} MiB), {} threads, CPU level {}, {} weights, {} reps\n\n",
        r.model.display(),
        r.arch,
        r.model_bytes as f64 / (1 << 20) as f64,
        r.threads,
        r.simd,
        r.layout,
        r.reps
    );
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|t| {
            let s = &t.tokens_per_s;
            vec![
                t.name.clone(),
                t.batch.to_string(),
                format!("{:.2}", s.median),
                format!("{:.2}", s.stddev),
                format!("{:.2}", s.min),
                format!("{:.2}", s.max),
                t.prefill_tokens_per_s
                    .map(|p| format!("{:.2}", p.median))
                    .unwrap_or_default(),
                s.n.to_string(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "test",
            "B",
            "t/s median",
            "± stddev",
            "min",
            "max",
            "prefill t/s",
            "n",
        ],
        &rows,
    ));
    out
}

fn pct_row(name: &str, p: &Percentiles) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{:.1}", p.mean),
        format!("{:.1}", p.p50),
        format!("{:.1}", p.p90),
        format!("{:.1}", p.p99),
        format!("{:.1}", p.max),
    ]
}

/// The table `lumen bench serve` prints.
pub fn serve_table(r: &ServeReport) -> String {
    let model = if r.model.is_empty() {
        "(none sent)"
    } else {
        &r.model
    };
    let mut out = format!(
        "server: {}{} model {model}, {} clients, max_tokens {}\n\n",
        r.url, r.endpoint, r.concurrency, r.max_tokens
    );
    let slo = {
        let parts: Vec<String> = [
            ("ttft", r.slo.ttft_ms),
            ("itl", r.slo.itl_ms),
            ("e2e", r.slo.e2e_ms),
        ]
        .iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n} <= {v} ms")))
        .collect();
        if parts.is_empty() {
            "no SLO set".to_string()
        } else {
            parts.join(", ")
        }
    };
    let summary = vec![
        vec![
            "requests (ok / errors)".into(),
            format!("{} / {}", r.completed, r.errors),
        ],
        vec!["duration s".into(), format!("{:.2}", r.duration_s)],
        vec!["requests/s".into(), format!("{:.3}", r.request_throughput)],
        vec![
            "output tok/s".into(),
            format!("{:.2}", r.output_tokens_per_s),
        ],
        vec![
            "output tokens (mean/request)".into(),
            format!("{} ({:.1})", r.total_output_tokens, r.mean_output_tokens),
        ],
        vec![
            format!("goodput req/s ({slo})"),
            format!("{:.3} ({:.0}%)", r.goodput, r.good_fraction * 100.0),
        ],
    ];
    out.push_str(&render(&["figure", "value"], &summary));
    out.push('\n');
    let lat = vec![
        pct_row("TTFT", &r.ttft_ms),
        pct_row("ITL", &r.itl_ms),
        pct_row("TPOT", &r.tpot_ms),
        pct_row("E2E", &r.e2e_ms),
    ];
    out.push_str(&render(
        &["latency ms", "mean", "p50", "p90", "p99", "max"],
        &lat,
    ));
    for e in &r.error_samples {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = render(
            &["a", "num"],
            &[
                vec!["long name".into(), "1.5".into()],
                vec!["x".into(), "100.25".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[2].contains("|    1.5 |"));
        assert!(lines[3].starts_with("| x         |"));
    }

    #[test]
    fn serve_table_mentions_errors() {
        let r = ServeReport {
            error_samples: vec!["HTTP 500".into()],
            errors: 1,
            ..ServeReport::default()
        };
        let t = serve_table(&r);
        assert!(t.contains("error: HTTP 500"));
        assert!(t.contains("no SLO set"));
    }
}
