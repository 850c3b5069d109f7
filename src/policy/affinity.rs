//! Prefix-affine routing for an alias whose deployments are replicas of one upstream model:
//! requests that share a long prompt prefix, or a session, go to the same replica, so that
//! replica's own prefix cache (vLLM's automatic prefix caching, llama-server's slots) hits.
//!
//! Algorithm: rendezvous (highest-random-weight) hashing. Each replica scores
//! `H(fingerprint, replica name)`; replicas are tried in descending score. A replica that
//! joins or leaves moves only the keys whose top choice it is (about 1/N of them), and the
//! order after the first choice is the natural fallback order. Bounded load: when the top
//! replica has more than `load_factor` times the mean in-flight load (plus one), the
//! least-loaded replica goes first instead, and the rest keep their order.
//!
//! The fingerprint is the request's session (`x-session-id`) if it names one, else a hash
//! of the first [`PREFIX_BYTES`] bytes of its prompt (system prompt and earliest turns come
//! first, so a conversation keeps its fingerprint as it grows).
//!
//! Pure and synchronous: (replicas, loads, fingerprint) -> order.

use std::hash::{Hash, Hasher};

use crate::protocol::{Prompt, ValidRequest};

pub const PREFIX_BYTES: usize = 2048;
pub const DEFAULT_LOAD_FACTOR: f64 = 1.5;

fn h64(x: impl Hash) -> u64 {
    // A fixed hasher: the same key must map the same way in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// What a request is routed on.
pub fn fingerprint(session: Option<&str>, req: &ValidRequest) -> u64 {
    if let Some(s) = session {
        return h64(("session", s));
    }
    let mut text = String::new();
    match &req.prompt {
        Prompt::Chat(msgs) => {
            for m in msgs {
                text.push_str(&m.role);
                text.push('\n');
                text.push_str(&m.content);
                text.push('\n');
                if text.len() >= PREFIX_BYTES {
                    break;
                }
            }
        }
        Prompt::Text(t) => text.push_str(t),
        Prompt::Embed(v) => text.push_str(v.first().map(String::as_str).unwrap_or("")),
    }
    let mut end = text.len().min(PREFIX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    h64(("prefix", &text[..end]))
}

/// The order in which to try `names` (indices into it), given each one's in-flight load.
pub fn order(names: &[&str], loads: &[u64], fingerprint: u64, load_factor: f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(h64((fingerprint, names[i]))));
    if names.len() > 1 {
        let mean = loads.iter().sum::<u64>() as f64 / loads.len() as f64;
        let top = idx[0];
        if loads[top] as f64 > mean * load_factor + 1.0 {
            if let Some(pos) = (0..idx.len()).min_by_key(|&p| loads[idx[p]]) {
                let least = idx.remove(pos);
                idx.insert(0, least);
            }
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_replica_and_a_leaving_replica_moves_only_its_keys() {
        let four = ["a", "b", "c", "d"];
        let three = ["a", "b", "d"];
        let mut moved = 0;
        for k in 0..1000u64 {
            let before = four[order(&four, &[0; 4], k, DEFAULT_LOAD_FACTOR)[0]];
            assert_eq!(before, four[order(&four, &[0; 4], k, DEFAULT_LOAD_FACTOR)[0]], "stable");
            let after = three[order(&three, &[0; 3], k, DEFAULT_LOAD_FACTOR)[0]];
            if before != after {
                moved += 1;
                assert_eq!(before, "c", "only keys of the replica that left move");
            }
        }
        assert!((150..350).contains(&moved), "about a quarter of the keys moved: {moved}");
    }

    #[test]
    fn keys_spread_and_load_is_bounded() {
        let names = ["a", "b", "c"];
        let mut counts = [0; 3];
        for k in 0..3000u64 {
            counts[order(&names, &[0; 3], k, DEFAULT_LOAD_FACTOR)[0]] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        let k = 42;
        let top = order(&names, &[0; 3], k, DEFAULT_LOAD_FACTOR)[0];
        let mut loads = [1; 3];
        loads[top] = 10;
        let o = order(&names, &loads, k, DEFAULT_LOAD_FACTOR);
        assert_ne!(o[0], top, "an overloaded replica yields to the least loaded");
        assert_eq!(o.len(), 3);
    }
}
