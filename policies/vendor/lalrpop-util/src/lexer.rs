#![doc(hidden)]
//! The built-in lalrpop lexer
//!
//! This is the code for the built in lexer, and is linked by lalrpop generated parsers to provide
//! lexer support when you don't write a custom lexer.
//!
//! Typically you don't want to use APIs from this module directly, they are public to be accessed
//! by the generated parser.
use alloc::{fmt, vec::Vec};
use core::marker::PhantomData;

use crate::ParseError;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::{BuildError, LazyStateID};
use regex_automata::nfa::thompson::Config as NfaConfig;
use regex_automata::util::syntax::Config as SyntaxConfig;
use regex_automata::{Anchored, Input, MatchKind};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token<'input>(pub usize, pub &'input str);
impl fmt::Display for Token<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        fmt::Display::fmt(self.1, formatter)
    }
}

pub struct MatcherBuilder {
    dfa: DFA,
    skip_vec: Vec<bool>,
    /// The lazy DFA cache of the last matcher, kept so that the next parse starts with the
    /// DFA states already built instead of determinizing them again (patched in, see
    /// ARP-PATCH.md).
    #[cfg(feature = "std")]
    spare_cache: std::sync::Mutex<Option<Cache>>,
}

impl MatcherBuilder {
    #[allow(clippy::result_large_err)]
    pub fn new<S>(exprs: impl IntoIterator<Item = (S, bool)>) -> Result<MatcherBuilder, BuildError>
    where
        S: AsRef<str>,
    {
        let exprs = exprs.into_iter();
        let mut regex_vec = Vec::with_capacity(exprs.size_hint().0);
        let mut skip_vec = Vec::with_capacity(exprs.size_hint().0);
        for (regex, skip) in exprs {
            regex_vec.push(regex);
            skip_vec.push(skip);
        }

        let enable_unicode = cfg!(feature = "unicode");
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::All))
            .syntax(
                SyntaxConfig::new()
                    .unicode(enable_unicode)
                    .utf8(enable_unicode),
            )
            .thompson(NfaConfig::new().utf8(enable_unicode).shrink(true))
            .build_many(&regex_vec)?;

        Ok(MatcherBuilder {
            dfa,
            skip_vec,
            #[cfg(feature = "std")]
            spare_cache: std::sync::Mutex::new(None),
        })
    }

    pub fn matcher<'input, 'builder, E>(
        &'builder self,
        text: &'input str,
    ) -> Matcher<'input, 'builder, E> {
        #[cfg(feature = "std")]
        let spare = self
            .spare_cache
            .lock()
            .ok()
            .and_then(|mut spare| spare.take());
        #[cfg(not(feature = "std"))]
        let spare = None;
        let cache = spare.unwrap_or_else(|| self.dfa.create_cache());
        Matcher {
            text,
            consumed: 0,
            cache: Some(cache),
            builder: self,
            _marker: PhantomData,
        }
    }
}

pub struct Matcher<'input, 'builder, E> {
    text: &'input str,
    consumed: usize,
    /// Always `Some` until the matcher is dropped and gives it back to the builder.
    cache: Option<Cache>,
    builder: &'builder MatcherBuilder,
    _marker: PhantomData<fn() -> E>,
}

impl<E> Drop for Matcher<'_, '_, E> {
    fn drop(&mut self) {
        #[cfg(feature = "std")]
        if let Some(cache) = self.cache.take() {
            if let Ok(mut spare) = self.builder.spare_cache.lock() {
                *spare = Some(cache);
            }
        }
    }
}

impl<'input, E> Iterator for Matcher<'input, '_, E> {
    type Item = Result<(usize, Token<'input>, usize), ParseError<usize, Token<'input>, E>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.text;
            let start_offset = self.consumed;
            if text.is_empty() {
                self.consumed = start_offset;
                return None;
            }

            let dfa = &self.builder.dfa;
            let cache = self.cache.get_or_insert_with(|| dfa.create_cache());
            let mut match_ = None;
            'search: {
                // The start state is looked up per token, not kept: a cache that fills up
                // is cleared, which invalidates the state ids taken from it before.
                let input = Input::new(text).anchored(Anchored::Yes);
                let mut state = dfa.start_state_forward(cache, &input).unwrap();
                for (i, byte) in text.bytes().enumerate() {
                    state = dfa.next_state(cache, state, byte).unwrap();
                    if state.is_match() {
                        match_ = Some((last_pattern(dfa, cache, state), i));
                    } else if state.is_dead() {
                        break 'search;
                    }
                }
                state = dfa.next_eoi_state(cache, state).unwrap();
                if state.is_match() {
                    match_ = Some((last_pattern(dfa, cache, state), text.len()));
                }
            }

            let (index, longest_match) = match match_ {
                Some(match_) => match_,
                None => {
                    return Some(Err(ParseError::InvalidToken {
                        location: start_offset,
                    }))
                }
            };

            let result = &text[..longest_match];
            let remaining = &text[longest_match..];
            let end_offset = start_offset + longest_match;
            self.text = remaining;
            self.consumed = end_offset;

            if self.builder.skip_vec[index] {
                if longest_match == 0 {
                    return Some(Err(ParseError::InvalidToken {
                        location: start_offset,
                    }));
                }
                continue;
            }

            return Some(Ok((start_offset, Token(index, result), end_offset)));
        }
    }
}

/// The highest pattern that `state` matches, read at once: state ids are only valid until the
/// cache is next cleared.
fn last_pattern(dfa: &DFA, cache: &Cache, state: LazyStateID) -> usize {
    (0..dfa.match_len(cache, state))
        .map(|n| dfa.match_pattern(cache, state, n).as_usize())
        .max()
        .unwrap()
}
