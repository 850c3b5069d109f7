//! The host-memory prefix cache's index: which token prefixes the engine keeps (as llama.cpp
//! sequence states, held by the engine thread beside this index), so a new request reuses
//! the longest one and prefills only the rest. Prefixes still in an idle slot's KV are
//! reused in place first (`worker.rs`); this cache holds what slots had to give up.
//!
//! Algorithm. Every kept prefix is an *entry*. Its tokens are cut into blocks of [`BLOCK`]
//! tokens and each block gets a chained hash `h_i = H(h_{i-1}, block_i)`, so one hash names
//! a whole prefix. The index maps chained hashes to (entry, blocks). A lookup walks the
//! request's blocks while their chained hashes are known, then verifies the tokens (hashes
//! may collide) and extends the match token by token inside the entry: the result is the
//! exact longest common prefix with that entry. The engine then restores that entry's
//! state into the request's slot and trims it to the match.
//!
//! Insertion happens when a slot gives up what it holds: its tokens become an entry. An entry
//! that is a prefix of the new one is replaced (a conversation's previous turn); a new one
//! that is a prefix of an existing entry only refreshes it.
//!
//! Invariants: an entry's tokens are exactly those of its saved state; the index holds only
//! hashes of live entries; the sum of entry lengths stays within the token budget. Eviction
//! is least recently used, and never touches pinned entries (the warmed `prompts/`).
//!
//! Knobs: `prefix_cache_tokens` (the budget in tokens, about 18 KB of host memory each for
//! the test model; 0 turns all reuse off) and `prefix_cache_entries` (how many prefixes), per
//! local deployment; [`BLOCK`] and [`MIN_REUSE`] here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Tokens per hashed block.
pub const BLOCK: usize = 32;
/// Shorter matches are not worth a copy.
pub const MIN_REUSE: usize = 16;

#[derive(Debug)]
struct Entry {
    tokens: Vec<i32>,
    hashes: Vec<u64>,
    last_used: u64,
    pinned: bool,
}

pub struct PrefixCache {
    entries: Vec<Option<Entry>>,
    index: HashMap<u64, (usize, usize)>,
    budget: usize,
    used: usize,
    clock: u64,
}

/// Where to store a new entry (if anywhere), and which entries' sequences to clear first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub entry: Option<usize>,
    pub evicted: Vec<usize>,
}

fn chain(tokens: &[i32]) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / BLOCK);
    let mut prev = 0u64;
    for b in tokens.chunks_exact(BLOCK) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prev.hash(&mut h);
        b.hash(&mut h);
        prev = h.finish();
        out.push(prev);
    }
    out
}

impl PrefixCache {
    pub fn new(entries: usize, budget_tokens: usize) -> Self {
        PrefixCache {
            entries: (0..entries).map(|_| None).collect(),
            index: HashMap::new(),
            budget: budget_tokens,
            used: 0,
            clock: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0 && !self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn used_tokens(&self) -> usize {
        self.used
    }

    /// The entry sharing the longest prefix with `tokens`, and that length.
    pub fn lookup(&mut self, tokens: &[i32]) -> Option<(usize, usize)> {
        if !self.enabled() {
            return None;
        }
        let mut best: Option<(usize, usize)> = None;
        for h in chain(tokens) {
            match self.index.get(&h) {
                Some(&(e, blocks)) => best = Some((e, blocks * BLOCK)),
                None => break,
            }
        }
        let (e, blocks_len) = best?;
        let entry = self.entries[e].as_mut()?;
        // Hashes may collide: the tokens decide. Then extend inside the entry.
        if entry.tokens.get(..blocks_len) != tokens.get(..blocks_len) {
            return None;
        }
        let mut n = blocks_len;
        while n < entry.tokens.len() && n < tokens.len() && entry.tokens[n] == tokens[n] {
            n += 1;
        }
        self.clock += 1;
        entry.last_used = self.clock;
        (n >= MIN_REUSE).then_some((e, n))
    }

    /// Drops entry `e` (its state could not be saved).
    pub fn forget(&mut self, e: usize) {
        self.remove(e);
    }

    fn remove(&mut self, e: usize) {
        if let Some(old) = self.entries[e].take() {
            self.used -= old.tokens.len();
            for (i, h) in old.hashes.iter().enumerate() {
                if self.index.get(h) == Some(&(e, i + 1)) {
                    // Entries sharing a prefix share its block hashes, and the index names the
                    // newest: hand the hash back to another entry that has it (a pinned
                    // prompt that this one extended would otherwise be unreachable).
                    let heir = self.entries.iter().position(|x| x.as_ref().is_some_and(|x| x.hashes.get(i) == Some(h)));
                    match heir {
                        Some(other) => self.index.insert(*h, (other, i + 1)),
                        None => self.index.remove(h),
                    };
                }
            }
        }
    }

    /// Makes room for `tokens` and records them. No entry when they are too short, too long
    /// for the budget, or already held by a longer entry (which is refreshed); the evicted
    /// entries' sequences must be cleared either way.
    pub fn insert(&mut self, tokens: &[i32], pinned: bool) -> Placement {
        if !self.enabled() || tokens.len() < BLOCK.max(MIN_REUSE) || tokens.len() > self.budget {
            return Placement::default();
        }
        let mut evicted = Vec::new();
        // An existing entry this one extends is superseded; one that extends this one stays.
        for e in 0..self.entries.len() {
            let Some(entry) = &self.entries[e] else { continue };
            if entry.tokens.len() >= tokens.len() && entry.tokens[..tokens.len()] == *tokens {
                self.clock += 1;
                if let Some(en) = self.entries[e].as_mut() {
                    en.last_used = self.clock;
                    en.pinned |= pinned;
                }
                return Placement { entry: None, evicted };
            }
            if !entry.pinned && tokens.starts_with(&entry.tokens) {
                self.remove(e);
                evicted.push(e);
            }
        }
        loop {
            let free = self.entries.iter().position(Option::is_none);
            if free.is_some() && self.used + tokens.len() <= self.budget {
                break;
            }
            let lru = self
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().filter(|e| !e.pinned).map(|e| (e.last_used, i)))
                .min()
                .map(|(_, i)| i);
            let Some(lru) = lru else { return Placement { entry: None, evicted } };
            self.remove(lru);
            evicted.push(lru);
        }
        let Some(e) = self.entries.iter().position(Option::is_none) else { return Placement { entry: None, evicted } };
        let hashes = chain(tokens);
        for (i, h) in hashes.iter().enumerate() {
            self.index.insert(*h, (e, i + 1));
        }
        self.clock += 1;
        self.used += tokens.len();
        self.entries[e] = Some(Entry { tokens: tokens.to_vec(), hashes, last_used: self.clock, pinned });
        Placement { entry: Some(e), evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(start: i32, n: usize) -> Vec<i32> {
        (start..start + n as i32).collect()
    }

    #[test]
    fn finds_the_longest_common_prefix() {
        let mut c = PrefixCache::new(4, 10_000);
        let a = seq(0, 100);
        assert_eq!(c.insert(&a, false), Placement { entry: Some(0), evicted: vec![] });
        let mut q = seq(0, 70);
        q.extend([9999, 9998]);
        assert_eq!(c.lookup(&q), Some((0, 70)), "exact LCP, past the last whole block");
        assert_eq!(c.lookup(&seq(1, 100)), None, "no shared first block");
        assert_eq!(c.lookup(&seq(0, 20)), None, "shorter than a block");
    }

    #[test]
    fn a_longer_turn_supersedes_its_prefix_and_lru_evicts() {
        let mut c = PrefixCache::new(2, 250);
        c.insert(&seq(0, 64), false);
        let p = c.insert(&seq(0, 96), false);
        assert_eq!(p, Placement { entry: Some(0), evicted: vec![0] }, "the earlier turn is replaced");
        assert_eq!(c.len(), 1);
        assert_eq!(c.insert(&seq(0, 64), false).entry, None, "already held by a longer entry");
        c.insert(&seq(1000, 96), false);
        assert_eq!(c.len(), 2);
        c.lookup(&seq(1000, 96));
        // Over budget: the least recently used (the 0.. entry) goes.
        let p = c.insert(&seq(5000, 96), false);
        assert_eq!(c.lookup(&seq(0, 96)), None);
        assert!(c.lookup(&seq(1000, 96)).is_some());
        assert!(!p.evicted.is_empty());
        assert!(c.used_tokens() <= 250);
    }

    #[test]
    fn an_evicted_entry_leaves_the_prefix_it_extended_reachable() {
        let mut c = PrefixCache::new(3, 1_000);
        c.insert(&seq(0, 64), true);
        let mut longer = seq(0, 64);
        longer.extend(seq(500, 64));
        c.insert(&longer, false);
        // Fill the budget until the longer entry is evicted; the pinned one stays findable.
        c.insert(&seq(2000, 400), false);
        c.insert(&seq(3000, 400), false);
        assert_eq!(c.lookup(&longer), Some((0, 64)), "the pinned prefix is still found");
    }

    #[test]
    fn pinned_entries_stay() {
        let mut c = PrefixCache::new(2, 200);
        c.insert(&seq(0, 96), true);
        c.insert(&seq(1000, 96), false);
        c.insert(&seq(2000, 96), false);
        assert!(c.lookup(&seq(0, 96)).is_some());
        assert!(c.lookup(&seq(2000, 96)).is_some());
        assert_eq!(c.insert(&seq(3000, 150), false).entry, None, "no room without evicting a pinned prefix");
    }
}
