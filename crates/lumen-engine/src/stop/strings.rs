//! Stop strings matched across token boundaries.
//!
//! Generated text arrives in deltas (one per token). A stop string can straddle several
//! deltas, so the matcher holds back any tail of the text that could still grow into a
//! stop string, and releases it once it cannot. The stop string itself and everything
//! after it are never emitted, as in the OpenAI API.

/// What one delta produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text that is safe to send to the client now.
    pub text: String,
    /// Index (into the matcher's stop list) of the stop string that matched, if any.
    pub stopped: Option<usize>,
}

/// Per-sequence stop-string matcher.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> StopMatcher
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
            done: false,
        }
    }

    /// Whether there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.done
    }

    /// Feeds the next delta; returns the text safe to emit and whether a stop matched.
    pub fn push(&mut self, delta: &str) -> StopOutput {
        if self.done {
            return StopOutput::default();
        }
        self.held.push_str(delta);
        // Earliest match wins; at the same position, the longest stop string.
        let mut best: Option<(usize, usize)> = None; // (byte position, stop index)
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(stop.as_str()) {
                let better = match best {
                    None => true,
                    Some((bp, bi)) => pos < bp || (pos == bp && stop.len() > self.stops[bi].len()),
                };
                if better {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            self.held.truncate(pos);
            self.done = true;
            return StopOutput {
                text: std::mem::take(&mut self.held),
                stopped: Some(i),
            };
        }
        let keep = self.partial_suffix_len();
        let emit_len = self.held.len() - keep;
        let rest = self.held.split_off(emit_len);
        let text = std::mem::replace(&mut self.held, rest);
        StopOutput {
            text,
            stopped: None,
        }
    }

    /// Ends the stream: releases held-back text (no stop string can complete any more).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop
    /// string (so might still become one).
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        let max = self
            .stops
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let start_min = held.len().saturating_sub(max);
        for (start, _) in held.char_indices().filter(|&(s, _)| s >= start_min) {
            let tail = &held[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                return tail.len();
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_split_across_three_deltas() {
        let mut m = StopMatcher::new(["<END>"]);
        let a = m.push("Hello <E");
        assert_eq!(
            a,
            StopOutput {
                text: "Hello ".into(),
                stopped: None
            }
        );
        let b = m.push("N");
        assert_eq!(
            b,
            StopOutput {
                text: String::new(),
                stopped: None
            }
        );
        let c = m.push("D> and more");
        assert_eq!(
            c,
            StopOutput {
                text: String::new(),
                stopped: Some(0)
            }
        );
        assert!(m.is_stopped());
        assert_eq!(m.push("later"), StopOutput::default());
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(["stop"]);
        assert_eq!(m.push("a st").text, "a ");
        assert_eq!(m.push("ep").text, "step");
        assert_eq!(m.push(" s").text, " ");
        assert_eq!(m.flush(), "s");
    }

    #[test]
    fn text_before_the_stop_in_the_same_delta_is_emitted() {
        let mut m = StopMatcher::new(vec!["\n\n".to_string(), "Human:".to_string()]);
        let out = m.push("answer.\n\nHuman: hi");
        assert_eq!(
            out,
            StopOutput {
                text: "answer.".into(),
                stopped: Some(0)
            }
        );
    }

    #[test]
    fn earliest_then_longest_match_wins() {
        let mut m = StopMatcher::new(["b", "abc", "ab"]);
        assert_eq!(m.push("xabcd").stopped, Some(1));
    }

    #[test]
    fn multibyte_text_and_stops() {
        let mut m = StopMatcher::new(["日本語"]);
        assert_eq!(m.push("こんにちは日").text, "こんにちは");
        assert_eq!(m.push("本").text, "");
        assert_eq!(m.push("人").text, "日本人");
        let out = m.push("日本語です");
        assert_eq!(
            out,
            StopOutput {
                text: String::new(),
                stopped: Some(0)
            }
        );
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert!(m.is_empty());
        assert_eq!(m.push("abc").text, "abc");
        assert_eq!(m.push("").text, "");
    }
}
