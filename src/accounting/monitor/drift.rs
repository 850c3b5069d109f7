//! Drift: PSI of a deployment's latest requests (prompt and completion lengths in log2 bins,
//! finish reasons) against its first ones.

use super::{FINISH_BINS, PSI_EPSILON, TOKEN_BINS};

/// Drift bin of a token count: 0; 1–2; then (2^(k−1), 2^k] in bin k; above 2^18 the last bin.
pub fn token_bin(n: u64) -> usize {
    match n {
        0 => 0,
        1..=2 => 1,
        _ => ((64 - (n - 1).leading_zeros()) as usize).min(TOKEN_BINS - 1),
    }
}

pub(super) fn finish_bin(reason: Option<&str>) -> usize {
    ["stop", "length", "tool_calls", "content_filter"].iter().position(|r| Some(*r) == reason).unwrap_or(4)
}

/// PSI of `cur` against `base`, counts over the same bins.
pub fn psi(base: &[u64], cur: &[u64]) -> f64 {
    let (bn, cn) = (base.iter().sum::<u64>() as f64, cur.iter().sum::<u64>() as f64);
    if bn == 0.0 || cn == 0.0 {
        return 0.0;
    }
    let share = |n: u64, total: f64| (n as f64 / total).max(PSI_EPSILON);
    base.iter().zip(cur).map(|(&b, &c)| (share(c, cn) - share(b, bn)) * (share(c, cn) / share(b, bn)).ln()).sum()
}

/// Drift state of one deployment: the baseline's bin counts (frozen once the ring is first full),
/// a ring of the latest requests' bins (prompt, completion, finish) and its running counts.
#[derive(Default)]
pub(super) struct Drift {
    base: [[u64; TOKEN_BINS]; 3],
    cur: [[u64; TOKEN_BINS]; 3],
    ring: Vec<[u8; 3]>,
    next: usize,
    pub(super) seen: u64,
}

impl Drift {
    pub(super) fn push(&mut self, bins: [u8; 3], size: usize) {
        if self.ring.len() < size {
            self.ring.push(bins);
            (0..3).for_each(|k| self.base[k][bins[k] as usize] += 1);
        } else {
            let old = std::mem::replace(&mut self.ring[self.next], bins);
            (0..3).for_each(|k| self.cur[k][old[k] as usize] -= 1);
            self.next = (self.next + 1) % size;
        }
        (0..3).for_each(|k| self.cur[k][bins[k] as usize] += 1);
        self.seen += 1;
    }

    pub(super) fn psi(&self, size: usize) -> Option<[f64; 3]> {
        let f = |k: usize, n: usize| psi(&self.base[k][..n], &self.cur[k][..n]);
        (size > 0 && self.ring.len() == size).then(|| [f(0, TOKEN_BINS), f(1, TOKEN_BINS), f(2, FINISH_BINS)])
    }
}
