//! Choosing a token: the sampler chain a request's parameters make (`logit_bias`, penalties,
//! greedy or top-k/top-p/min-p/temperature with the seed), constrained sampling under a
//! grammar, and the log-probabilities reported for each chosen token.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;

use super::job::{GenParams, TokenLogprob};

/// How many of the likeliest tokens a greedy choice under a grammar checks before it masks
/// the whole vocabulary.
const GREEDY_SHORTLIST: usize = 256;

/// Samples the next token from the logits at `at`. Under a grammar, as llama-server does:
/// the unconstrained choice is kept when the grammar accepts it (one token checked, not the
/// whole vocabulary); otherwise the grammar masks every token and the chain samples again.
///
/// Greedy (`greedy`: the chain ends in argmax) goes further, with the same answer: the
/// grammar checks only the [`GREEDY_SHORTLIST`] likeliest tokens (after bias and penalties)
/// and the first it accepts, in order of logit and then id, is the token; the argmax over the
/// accepted tokens of the whole vocabulary is necessarily that one, ties broken as llama.cpp's
/// greedy sampler breaks them (the lowest id). Only when it accepts none of them is the whole
/// vocabulary masked. Both samplers accept the token.
pub fn pick(
    chain: &mut LlamaSampler,
    grammar: Option<&mut LlamaSampler>,
    greedy: bool,
    ctx: &LlamaContext<'_>,
    at: i32,
) -> LlamaToken {
    let Some(g) = grammar else { return chain.sample(ctx, at) };
    let mut cur = ctx.token_data_array_ith(at);
    chain.apply(&mut cur);
    let first = cur.selected_token();
    let accepted = first.filter(|&t| {
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(t, 0.0, 0.0)], false);
        g.apply(&mut one);
        one.data.first().is_some_and(|d| d.logit().is_finite())
    });
    let shortlisted = if accepted.is_none() && greedy { shortlist(g, &mut cur.data) } else { None };
    let token = match accepted.or(shortlisted) {
        Some(t) => t,
        None => {
            let mut cur = ctx.token_data_array_ith(at);
            g.apply(&mut cur);
            chain.apply(&mut cur);
            cur.selected_token().or(first).unwrap_or(LlamaToken(0))
        }
    };
    g.accept(token);
    chain.accept(token);
    token
}

/// The likeliest token among the [`GREEDY_SHORTLIST`] likeliest of `data` that `g` accepts
/// (ties: the lowest id), or `None` when it accepts none of them.
fn shortlist(g: &mut LlamaSampler, data: &mut [LlamaTokenData]) -> Option<LlamaToken> {
    let order = |a: &LlamaTokenData, b: &LlamaTokenData| b.logit().total_cmp(&a.logit()).then(a.id().0.cmp(&b.id().0));
    let k = GREEDY_SHORTLIST.min(data.len());
    if k == 0 {
        return None;
    }
    if k < data.len() {
        data.select_nth_unstable_by(k - 1, order);
    }
    let mut top: Vec<LlamaTokenData> = data[..k].to_vec();
    top.sort_by(order);
    let mut arr = LlamaTokenDataArray::new(top, false);
    g.apply(&mut arr);
    // The grammar sets the logits of the tokens it rejects to -inf, in place, in order.
    arr.data.iter().find(|d| d.logit().is_finite()).map(LlamaTokenData::id)
}

/// The log-probability of `token` and the `k` likeliest tokens, from the model's distribution
/// at these logits with the request's `logit_bias` applied (before temperature, top-k/p and
/// any grammar: what OpenAI and llama-server report).
pub fn token_logprob(
    model: &LlamaModel,
    logits: &[f32],
    bias: &[(i32, f32)],
    token: LlamaToken,
    k: u8,
) -> TokenLogprob {
    let biased = |i: usize| -> f32 {
        let b: f32 = bias.iter().filter(|(t, _)| *t as usize == i).map(|(_, b)| *b).sum();
        logits[i] + b
    };
    let has_bias = !bias.is_empty();
    let at = |i: usize| if has_bias { biased(i) } else { logits[i] };
    let max = (0..logits.len()).map(at).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = (0..logits.len()).map(|i| f64::from(at(i) - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |i: usize| (f64::from(at(i)) - log_z) as f32;
    // The k largest, by one pass over the vocabulary with a small sorted list.
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(k as usize + 1);
    if k > 0 {
        for i in 0..logits.len() {
            let v = at(i);
            if top.len() < k as usize || v > top[top.len() - 1].1 {
                let pos = top.partition_point(|&(_, w)| w >= v);
                top.insert(pos, (i, v));
                top.truncate(k as usize);
            }
        }
    }
    let piece = |t: i32| model.vocab().token_to_piece(LlamaToken(t), false, None);
    TokenLogprob {
        bytes: piece(token.0),
        logprob: lp(token.0 as usize),
        top: top.into_iter().map(|(i, _)| (piece(i as i32), lp(i))).collect(),
    }
}

pub fn sampler(p: &GenParams, n_vocab: i32, eog: &[LlamaToken]) -> LlamaSampler {
    let mut chain = Vec::new();
    let mut bias: Vec<LlamaLogitBias> =
        p.logit_bias.iter().map(|&(t, b)| LlamaLogitBias::new(LlamaToken(t), b)).collect();
    if p.ignore_eos {
        bias.extend(eog.iter().map(|t| LlamaLogitBias::new(*t, f32::NEG_INFINITY)));
    }
    if !bias.is_empty() {
        chain.push(LlamaSampler::logit_bias(n_vocab, &bias));
    }
    if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(n_vocab, 64, p.repetition_penalty, p.frequency_penalty, p.presence_penalty));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed));
    }
    LlamaSampler::chain_simple(chain)
}
