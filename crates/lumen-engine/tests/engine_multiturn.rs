//! Multi-turn reuse: blocks of generated tokens enter the prefix cache (with the default,
//! packed layout, whose decode computes the same KV a prefill would), so the next turn, whose
//! prompt holds this turn's answer, computes only what is new, with unchanged results.

mod common;

use common::{engine, greedy, prompt, run_all, smollm2};
use lumen_engine::registry::{resolve, ChatModel};
use lumen_engine::{WeightLayout, BLOCK_SIZE};

#[test]
fn the_next_turn_reuses_the_answer_and_gets_the_same_tokens() {
    let Some(chat) = smollm2() else { return };
    let first = prompt(1, 100);
    let eng = engine(&chat, 512, 8);
    let turn1 = run_all(&eng, vec![greedy(first.clone(), 40)]).remove(0);
    let answer = &turn1.tokens[0];
    assert_eq!(answer.len(), 40);
    let mut second = first.clone();
    second.extend_from_slice(answer);
    second.extend(prompt(2, 20));
    let turn2 = run_all(&eng, vec![greedy(second.clone(), 16)]).remove(0);
    // Every full block the first turn computed: its prompt and all but its last answer token
    // (sampled, never fed back).
    let computed = first.len() + answer.len() - 1;
    assert_eq!(
        turn2.usage.cached_prompt_tokens,
        computed / BLOCK_SIZE * BLOCK_SIZE
    );
    // A cold engine computes the whole prompt and gets the same tokens.
    let cold = engine(&chat, 512, 8);
    let fresh = run_all(&cold, vec![greedy(second, 16)]).remove(0);
    assert_eq!(fresh.usage.cached_prompt_tokens, 0);
    assert_eq!(fresh.tokens, turn2.tokens);
}

#[test]
fn the_exact_layout_reuses_prompt_blocks_only() {
    if lumen_testkit::chat_gguf().is_none() {
        return;
    }
    let loc = resolve(lumen_testkit::CHAT_MODEL, &lumen_testkit::lumen_home()).expect("resolve");
    let chat = ChatModel::load_with(&loc, WeightLayout::Exact).expect("load");
    let first = prompt(3, 100);
    let eng = engine(&chat, 512, 8);
    let turn1 = run_all(&eng, vec![greedy(first.clone(), 40)]).remove(0);
    let mut second = first.clone();
    second.extend_from_slice(&turn1.tokens[0]);
    let turn2 = run_all(&eng, vec![greedy(second, 4)]).remove(0);
    // Its decode arithmetic differs from its prefill's: generated blocks are not published.
    assert_eq!(
        turn2.usage.cached_prompt_tokens,
        first.len() / BLOCK_SIZE * BLOCK_SIZE
    );
}
