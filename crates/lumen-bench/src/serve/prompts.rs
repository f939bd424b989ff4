//! The prompt mix: a reproducible list of prompts of varied length from a seed.
//!
//! Prompts are built from a fixed word list, so the same seed gives byte-identical prompts on
//! every machine, with no data set to download. Each starts with its own request number, so
//! no two share a long prefix and neither server gets a prefix-cache advantage from the mix.

use crate::rng::SplitMix64;

/// Common English words; their token counts are close to one per word for most tokenizers.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there",
    "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other",
    "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like",
    "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no",
    "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its",
    "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part", "river",
    "city", "garden", "story", "music", "light", "small", "large", "world", "house", "school",
    "answer", "learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
    "never", "last", "let", "thought", "tree", "cross", "farm", "hard", "start", "might", "sea",
    "draw", "left", "late", "run", "while", "press", "close", "night", "real", "life", "few",
    "north",
];

/// Instructions the prompts open with, so the text reads as a request.
const OPENERS: &[&str] = &[
    "Summarise the following notes in plain words:",
    "Continue this story for a while:",
    "Explain what these words have in common:",
    "Write a short essay that uses these words:",
    "Translate the spirit of this list into a poem:",
];

/// How the mix is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptMix {
    /// Seed of the mix.
    pub seed: u64,
    /// Fewest words of filler per prompt.
    pub min_words: usize,
    /// Most words of filler per prompt.
    pub max_words: usize,
}

impl Default for PromptMix {
    fn default() -> Self {
        PromptMix {
            seed: 2024,
            min_words: 32,
            max_words: 256,
        }
    }
}

impl PromptMix {
    /// The first `n` prompts of the mix (the same `n` prompts whatever the concurrency).
    pub fn prompts(&self, n: usize) -> Vec<String> {
        let mut rng = SplitMix64::new(self.seed);
        let (lo, hi) = (
            self.min_words.min(self.max_words),
            self.max_words.max(self.min_words),
        );
        (0..n)
            .map(|i| {
                let words = rng.range_inclusive(lo as u64, hi as u64) as usize;
                let opener = OPENERS[rng.below(OPENERS.len() as u64) as usize];
                let mut s = format!("Request {i}. {opener}");
                for _ in 0..words {
                    s.push(' ');
                    s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                }
                s.push('.');
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_varied() {
        let mix = PromptMix::default();
        let a = mix.prompts(20);
        assert_eq!(a, mix.prompts(20));
        // A longer list starts with the shorter one.
        assert_eq!(&mix.prompts(30)[..20], &a[..]);
        assert_ne!(a, PromptMix { seed: 1, ..mix }.prompts(20));
        let lens: Vec<usize> = a.iter().map(|p| p.split(' ').count()).collect();
        assert!(lens.iter().min() < lens.iter().max(), "lengths vary");
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, p)| p.starts_with(&format!("Request {i}. "))));
    }

    #[test]
    fn word_counts_stay_in_range() {
        let mix = PromptMix {
            seed: 9,
            min_words: 5,
            max_words: 7,
        };
        for p in mix.prompts(50) {
            let filler = p.split(':').nth(1).unwrap_or("").split_whitespace().count();
            assert!((5..=7).contains(&filler), "{filler} words in {p:?}");
        }
        // Swapped bounds are taken in order.
        let swapped = PromptMix {
            seed: 9,
            min_words: 7,
            max_words: 5,
        };
        assert_eq!(swapped.prompts(3).len(), 3);
    }
}
