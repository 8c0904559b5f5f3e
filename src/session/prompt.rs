//! The checks every caller (CLI, server, library) runs on a prompt before it reaches the GPU.

#![warn(missing_docs)]

use std::fmt;

/// Why a prompt cannot run: the checks every caller (CLI, server, library) gets from
/// [`check_prompt`], so each says the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptProblem {
    /// No tokens at all.
    Empty,
    /// A token id the model's vocabulary does not have.
    OutOfVocabulary {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The prompt and what the session already holds exceed the context.
    TooLong {
        /// New tokens.
        new: usize,
        /// Tokens already in the session.
        held: usize,
        /// Context capacity.
        capacity: usize,
    },
}

impl fmt::Display for PromptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PromptProblem::Empty => f.write_str("the prompt is empty: nothing to generate from"),
            PromptProblem::OutOfVocabulary { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary (size {vocab})")
            }
            PromptProblem::TooLong {
                new,
                held: 0,
                capacity,
            } => write!(
                f,
                "the prompt is {new} tokens but the context holds {capacity}; shorten the \
                 prompt or raise the context size (--ctx)"
            ),
            PromptProblem::TooLong {
                new,
                held,
                capacity,
            } => write!(
                f,
                "the prompt needs {} tokens of context ({new} new + {held} already in the \
                 session) but the context holds {capacity}; shorten the prompt or raise the \
                 context size (--ctx)",
                new + held
            ),
        }
    }
}

/// Check `tokens` as a prompt for a model of `vocab` tokens, appended to `held` tokens in a
/// context of `capacity`: not empty, every id in the vocabulary, and room for all of them.
pub fn check_prompt(
    tokens: &[u32],
    vocab: usize,
    held: usize,
    capacity: usize,
) -> std::result::Result<(), PromptProblem> {
    if tokens.is_empty() {
        return Err(PromptProblem::Empty);
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(PromptProblem::OutOfVocabulary { id, vocab });
    }
    if held + tokens.len() > capacity {
        return Err(PromptProblem::TooLong {
            new: tokens.len(),
            held,
            capacity,
        });
    }
    Ok(())
}

/// The most new tokens a prompt of `prompt_len` tokens leaves room for in a context of
/// `capacity` (generation also stops there with `length`): every generated token but the
/// last is written to the cache.
pub fn room_for_generation(capacity: usize, prompt_len: usize) -> usize {
    (capacity + 1).saturating_sub(prompt_len)
}
