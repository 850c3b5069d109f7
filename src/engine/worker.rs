//! The engine thread: one named OS thread per loaded model owns the llama.cpp context and
//! runs continuous batching over a fixed set of sequence slots.
//!
//! Each step:
//! 1. drops sequences whose client is gone (their reply channel is closed) and frees their
//!    KV cells;
//! 2. admits waiting jobs into free slots, interactive before batch, each into the slot
//!    that already holds the longest prefix of its prompt (see "Reuse" below);
//! 3. builds one batch: one token for every decoding sequence first, then prompt tokens of
//!    prefilling sequences, oldest first, up to `n_batch` tokens in all (chunked prefill: a
//!    long prompt takes several steps, so running streams keep flowing);
//! 4. decodes it; a decode failure fails the sequences in that batch, never the process;
//! 5. samples one token for every sequence that produced logits, turns it into text
//!    (UTF-8 and stop strings handled by [`TextStream`]) and sends it; finished sequences
//!    free their slot.
//!
//! When no sequence is active and nothing waits, the thread sleeps on the queue's condvar.
//!
//! KV layout, and why. Every slot has a KV *stream of its own* (`kv_unified = false`), so a
//! sequence's cells sit at the indexes of their positions, 0, 1, 2, ..., whatever the other
//! slots did before. The attention kernels sum over cells in index order, so the layout is
//! part of the arithmetic: in a shared (unified) cache, a prefix reused through `seq_cp`
//! and a suffix placed in whatever cells were free made the same request round differently
//! from its cold run, and greedy answers changed with the cache's history (measured: 3 of 15
//! repeats differed after warm-up traffic; issue #12). With one stream per slot, a reused
//! prefix has exactly the layout of a cold one.
//!
//! Reuse. A finished request leaves its KV in its slot (the slot *holds* those tokens). A new
//! job goes to the free slot holding the longest common prefix with its prompt and keeps that
//! much (the rest is trimmed; at least one prompt token is always prefilled, since its logits
//! choose the first token). When the host-memory prefix cache ([`PrefixCache`]) knows a
//! longer prefix, the job takes the least useful free slot instead, whose held tokens are
//! first saved to that cache (llama.cpp's sequence state), and the entry is restored into
//! it: a restore writes cells 0..n of the stream, the same layout again. Sessions restore
//! their files the same way. Warmed `prompts/` are pinned in the host cache.
//!
//! Deterministic numerics (`deterministic = true`, per deployment): the layout above makes a
//! reused prefix identical to a cold one, but ggml's CPU flash attention has three kernels
//! (a tiled one for 64 or more query tokens, a KV-split one for a lone query over 512 or more
//! cells, a plain one otherwise) that round differently, so what else shares a step can move
//! a logit's last bits: a cold run computes its last prompt token inside a prefill chunk, a
//! reuse computes it alone, and a stream decoded beside others takes another kernel than
//! one decoded alone. An 8-bit (Q8_0) KV cache takes the plain kernel for every shape, and
//! with ggml's batch-size-dependent tiled matmul off (`GGML_CPU_TILED_MM=0`, decided once
//! per process: `engine::decide_batch_invariant_matmul`), attention no longer depends on the
//! batch's shape. The weight matmuls still take one kernel for a single row and another for
//! several, so a deterministic deployment also computes a prompt's last token in a step of
//! its own: a cold run then computes it exactly as a reuse of the same prompt does, at the
//! cost of one step of time to first token on a cold prompt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::job::{CloseOnExit, Event, Job, Queue, Timings};
use super::prefix::{PrefixCache, MIN_REUSE};
use super::sample::{pick, sampler, token_logprob};
use super::sessions::{Restored, SessionFiles};
use super::text::TextStream;
use crate::clock::ms;

pub struct EngineSettings {
    pub name: String,
    pub ctx_per_seq: u32,
    pub parallel: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub threads: i32,
    /// The host-memory prefix cache: tokens it may hold (0: no reuse at all) and entries.
    pub cache_tokens: u32,
    pub cache_entries: u32,
    pub sessions: Option<SessionFiles>,
    /// Batch-invariant numerics: a Q8_0 KV cache (see the module header).
    pub deterministic: bool,
}

/// What an idle slot's KV stream still holds, for reuse by the next job.
#[derive(Default)]
struct Held {
    tokens: Vec<i32>,
    last_used: u64,
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

struct Seq {
    job: Job,
    /// Which of the job's `n` choices this sequence generates.
    choice: u32,
    /// A later choice waits for the first choice's slot to finish the prompt, then takes a
    /// copy of its KV and samples from the same logits.
    copy_from: Option<usize>,
    sampler: LlamaSampler,
    grammar: Option<LlamaSampler>,
    text: TextStream,
    /// Tokens in this sequence's KV cache.
    n_past: usize,
    /// Prompt tokens reused from the prefix cache, and from where.
    cached: usize,
    cache_from: Option<&'static str>,
    /// Generated tokens that went through decode (so are in the KV cache).
    decoded: Vec<LlamaToken>,
    /// Prompt tokens added to batches so far.
    prefilled: usize,
    /// The token sampled last step, to be decoded this step.
    next: Option<LlamaToken>,
    /// Index in the current batch whose logits this sequence samples from.
    logits_at: Option<i32>,
    generated: u32,
    admitted: Instant,
    first_token: Option<Instant>,
    /// Admitted from the interactive queue (not a batch line).
    interactive: bool,
}

impl Seq {
    /// A sequence for choice `choice` of `job`, whose KV already covers `cached` prompt
    /// tokens (a later choice: none until it copies `copy_from`'s). A grammar that does not
    /// compile fails the job (the async side checked it, so this is a defect, reported).
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &LlamaModel,
        job: Job,
        choice: u32,
        copy_from: Option<usize>,
        cached: usize,
        cache_from: Option<&'static str>,
        interactive: bool,
        n_vocab: i32,
        eog: &[LlamaToken],
    ) -> Result<Seq, Box<Job>> {
        let grammar = match &job.params.grammar {
            None => None,
            Some(g) if g.triggers.is_empty() => LlamaSampler::grammar(model, &g.gbnf, "root").ok(),
            Some(g) => LlamaSampler::grammar_lazy(model, &g.gbnf, "root", &g.triggers, &[]).ok(),
        };
        if job.params.grammar.is_some() && grammar.is_none() {
            let _ = job.tx.send(Event::Error("the request's grammar did not compile".into()));
            return Err(Box::new(job));
        }
        let mut p = job.params.clone();
        p.seed = p.seed.wrapping_add(choice).min(0xFFFF_FFFE);
        Ok(Seq {
            choice,
            copy_from,
            cached,
            cache_from,
            decoded: Vec::new(),
            sampler: sampler(&p, n_vocab, eog),
            grammar,
            text: TextStream::new(job.params.stops.clone()),
            n_past: cached,
            // A later choice prefills nothing of its own.
            prefilled: if copy_from.is_some() { job.tokens.len() } else { cached },
            job,
            next: None,
            logits_at: None,
            generated: 0,
            admitted: Instant::now(),
            first_token: None,
            interactive,
        })
    }
}

/// Creates the context and runs the loop until the queue closes. `ready` reports whether
/// the context could be created.
pub fn run(
    backend: &'static LlamaBackend,
    model: Arc<LlamaModel>,
    set: EngineSettings,
    queue: Arc<Queue>,
    ready: tokio::sync::oneshot::Sender<Result<(), super::EngineError>>,
) {
    // One KV stream per slot, each of `ctx_per_seq` cells (llama.cpp rounds a stream to 256).
    let n_ctx = set.ctx_per_seq.div_ceil(256).saturating_mul(256).saturating_mul(set.parallel);
    let mut params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n_ctx))
        .with_n_batch(set.n_batch)
        .with_n_ubatch(set.n_ubatch.min(set.n_batch))
        .with_n_seq_max(set.parallel)
        .with_n_threads(set.threads)
        .with_n_threads_batch(set.threads)
        .with_kv_unified(false);
    if set.deterministic {
        params = params.with_type_k(KvCacheType::Q8_0).with_type_v(KvCacheType::Q8_0);
    }
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(error) => {
            let _ = ready.send(Err(super::EngineError::Context { n_ctx, parallel: set.parallel, error }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let _close = CloseOnExit(queue.clone());
    tracing::info!(engine = %set.name, n_ctx, parallel = set.parallel, n_batch = set.n_batch, deterministic = set.deterministic, "engine thread ready");
    let mut batch = LlamaBatch::new(set.n_batch as usize, 1);
    let mut slots: Vec<Option<Seq>> = (0..set.parallel).map(|_| None).collect();
    let mut cache = PrefixCache::new(set.cache_entries as usize, set.cache_tokens as usize);
    // The host cache's entries' sequence states, by entry index.
    let mut states: Vec<Option<SeqState>> = (0..set.cache_entries).map(|_| None).collect();
    let mut held: Vec<Held> = (0..set.parallel).map(|_| Held::default()).collect();
    let mut clock = 0u64;
    let mut sessions = set.sessions;
    let n_vocab = model.n_vocab();
    let eog: Vec<LlamaToken> = {
        let v = model.vocab();
        [v.eos(), v.eot()].into_iter().filter(|t| t.0 >= 0).collect()
    };
    loop {
        // 1. Clients gone: free their slots.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| s.job.tx.is_closed()) {
                *slot = None;
                free_seq(&mut ctx, i);
                held[i].tokens.clear();
            }
        }
        // 2. Admit, or sleep when idle.
        {
            let mut q = queue.lock();
            loop {
                // A job of `n` choices waits, at the head of its queue, for `n` free slots.
                let free_slots = slots.iter().filter(|s| s.is_none()).count();
                let front = match q.interactive.front() {
                    Some(j) => Some((true, j.params.n)),
                    None => q.batch.front().map(|j| (false, j.params.n)),
                };
                let Some((interactive, n)) = front else { break };
                if n.max(1) as usize > free_slots {
                    break;
                }
                let popped = if interactive { q.interactive.pop_front() } else { q.batch.pop_front() };
                let Some(job) = popped else { break };
                if job.tx.is_closed() {
                    continue;
                }
                let ids: Vec<i32> = job.tokens.iter().map(|t| t.0).collect();
                let (first, cached, cache_from) =
                    place(&mut ctx, &mut cache, &mut states, &mut held, &slots, sessions.as_mut(), &job, &ids);
                let followers: Vec<Job> = (1..job.params.n).map(|_| job.follower()).collect();
                match Seq::new(&model, job, 0, None, cached, cache_from, interactive, n_vocab, &eog) {
                    Ok(seq) => slots[first] = Some(seq),
                    Err(job) => {
                        free_seq(&mut ctx, first);
                        drop(job);
                        continue;
                    }
                }
                for (c, job) in followers.into_iter().enumerate() {
                    let slot = take_free_slot(&mut ctx, &mut cache, &mut states, &mut held, &slots);
                    if let Ok(seq) =
                        Seq::new(&model, job, c as u32 + 1, Some(first), 0, None, interactive, n_vocab, &eog)
                    {
                        slots[slot] = Some(seq);
                    }
                }
            }
            queue.active.store(slots.iter().filter(|s| s.is_some()).count(), Ordering::Relaxed);
            if slots.iter().all(Option::is_none) {
                if q.closed {
                    break;
                }
                drop(queue.cv.wait(q).unwrap_or_else(|p| p.into_inner()));
                continue;
            }
        }
        // 3. One batch: decode tokens first, then prompt chunks. While an interactive prompt
        //    is being prefilled, batch lines sit this step out: the step is small and the
        //    interactive request's first token comes sooner (batch lines lose one step).
        batch.clear();
        let mut overflow = false;
        let mut in_batch = vec![false; slots.len()];
        let urgent = slots.iter().flatten().any(|s| s.interactive && s.prefilled < s.job.tokens.len());
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            s.logits_at = None;
            if urgent && !s.interactive {
                continue;
            }
            if let Some(t) = s.next.take() {
                overflow |= batch.add(t, s.n_past as i32, &[i as i32], true).is_err();
                s.decoded.push(t);
                in_batch[i] = true;
                s.n_past += 1;
                s.logits_at = Some(batch.n_tokens() - 1);
            }
        }
        let mut budget = (set.n_batch as i32 - batch.n_tokens()).max(0) as usize;
        let mut order: Vec<usize> = (0..slots.len())
            .filter(|&i| {
                slots[i].as_ref().is_some_and(|s| s.prefilled < s.job.tokens.len() && (s.interactive || !urgent))
            })
            .collect();
        order.sort_by_key(|&i| slots[i].as_ref().map(|s| s.admitted));
        for i in order {
            let Some(s) = slots[i].as_mut() else { continue };
            if budget == 0 {
                break;
            }
            // Deterministic: the last prompt token is computed alone, in a step of its own, as
            // a reuse computes it (matmul kernels are chosen by row count); a warmed prompt
            // is prefilled whole, as the prompts that extend it are.
            let len = s.job.tokens.len();
            let end = if set.deterministic && !s.job.pin_prefix && s.prefilled + 1 < len { len - 1 } else { len };
            let take = budget.min(end - s.prefilled);
            in_batch[i] = true;
            for k in 0..take {
                let idx = s.prefilled + k;
                let last = idx + 1 == s.job.tokens.len();
                overflow |= batch.add(s.job.tokens[idx], s.n_past as i32, &[i as i32], last).is_err();
                s.n_past += 1;
                if last {
                    s.logits_at = Some(batch.n_tokens() - 1);
                }
            }
            s.prefilled += take;
            budget -= take;
        }
        if batch.n_tokens() == 0 {
            continue;
        }
        // 4. Decode; a failure fails the sequences in this batch.
        let res = if overflow {
            Err("the batch overflowed".to_owned())
        } else {
            ctx.decode(&mut batch).map_err(|e| e.to_string())
        };
        if let Err(e) = res {
            tracing::error!(engine = %set.name, error = %e, "decode failed; failing the requests in this batch");
            for (i, slot) in slots.iter_mut().enumerate() {
                if !in_batch[i] {
                    continue;
                }
                if let Some(s) = slot.take() {
                    let _ = s.job.tx.send(Event::Error(format!("the engine failed to decode: {e}")));
                    free_seq(&mut ctx, i);
                    held[i].tokens.clear();
                }
            }
            continue;
        }
        // 5. Later choices whose first choice has just finished the prompt take a copy of
        //    its KV and sample from the same logits. Then every sequence with logits samples
        //    and emits.
        for i in 0..slots.len() {
            let Some(first) = slots[i].as_ref().and_then(|s| s.copy_from) else { continue };
            let ready =
                slots[first].as_ref().filter(|f| f.decoded.is_empty()).and_then(|f| Some((f.logits_at?, f.n_past)));
            if let (Some((at, n_past)), Some(s)) = (ready, slots[i].as_mut()) {
                if ctx.copy_kv_cache_seq(first as i32, i as i32, None, None).is_ok() {
                    s.copy_from = None;
                    s.logits_at = Some(at);
                    s.n_past = n_past;
                }
            }
        }
        let vocab = model.vocab();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let Some(at) = s.logits_at else { continue };
            let greedy = s.job.params.temperature <= 0.0;
            let token = pick(&mut s.sampler, s.grammar.as_mut(), greedy, &ctx, at);
            let logprobs = match s.job.params.top_logprobs {
                Some(k) => vec![token_logprob(&model, ctx.get_logits_ith(at), &s.job.params.logit_bias, token, k)],
                None => Vec::new(),
            };
            let now = Instant::now();
            s.first_token.get_or_insert(now);
            let mut finish = None;
            let mut stop = None;
            if vocab.is_eog(token) {
                finish = Some("stop");
            } else {
                s.generated += 1;
                let bytes = vocab.token_to_piece(token, s.job.params.show_special, None);
                let piece = s.text.push(&bytes);
                let text = Event::Text { choice: s.choice, text: piece.text, logprobs };
                if matches!(&text, Event::Text { text, logprobs, .. } if !text.is_empty() || !logprobs.is_empty())
                    && s.job.tx.send(text).is_err()
                {
                    *slot = None;
                    free_seq(&mut ctx, i);
                    continue;
                }
                if piece.stop.is_some() {
                    stop = piece.stop;
                    finish = Some("stop");
                } else if s.generated >= s.job.params.max_tokens || s.n_past + 1 >= set.ctx_per_seq as usize {
                    finish = Some("length");
                } else {
                    s.next = Some(token);
                }
            }
            if let Some(reason) = finish {
                if let Some(mut s) = slot.take() {
                    // After a stop string nothing is held; after EOG or the length limit,
                    // text held for a possible stop string is released.
                    let rest = s.text.finish();
                    if !rest.is_empty() {
                        let _ = s.job.tx.send(Event::Text { choice: s.choice, text: rest, logprobs: Vec::new() });
                    }
                    let first = s.first_token.unwrap_or(now);
                    let timings = Timings {
                        queued_ms: ms(s.admitted.duration_since(s.job.enqueued)),
                        cache_n: s.cached as u64,
                        cache_from: s.cache_from,
                        prompt_n: (s.job.tokens.len() - s.cached) as u64,
                        prompt_ms: ms(first.duration_since(s.admitted)),
                        predicted_n: u64::from(s.generated),
                        predicted_ms: ms(now.duration_since(first)),
                    };
                    s.job.ticket.take();
                    let _ = s.job.tx.send(Event::Done {
                        choice: s.choice,
                        finish: reason,
                        stop,
                        prompt_tokens: s.job.tokens.len() as u64,
                        completion_tokens: u64::from(s.generated),
                        timings,
                    });
                    let mut kv: Vec<LlamaToken> = s.job.tokens.clone();
                    kv.extend(&s.decoded);
                    kv.truncate(s.n_past);
                    if let (Some(sessions), Some(id), 0) = (sessions.as_mut(), &s.job.session, s.choice) {
                        sessions.save(&ctx, id, i as i32, &kv);
                    }
                    // The slot keeps its KV for the next job; a warmed prompt is also pinned in
                    // the host cache, so it outlives the slot's next use.
                    clock += 1;
                    held[i] = Held { tokens: kv.iter().map(|t| t.0).collect(), last_used: clock };
                    if !cache.enabled() {
                        free_seq(&mut ctx, i);
                        held[i].tokens.clear();
                    } else if s.job.pin_prefix {
                        keep(&ctx, &mut cache, &mut states, i, &held[i].tokens, true);
                    }
                }
            }
        }
        // Slots freed this step count as free at once (the admission that follows would
        // say so too, but a request arriving in between must see the room).
        queue.active.store(slots.iter().filter(|s| s.is_some()).count(), Ordering::Relaxed);
        let cells: usize = slots.iter().zip(&held).map(|(s, h)| s.as_ref().map_or(h.tokens.len(), |s| s.n_past)).sum();
        queue.kv_cells.store(cells, Ordering::Relaxed);
        queue.sessions.store(sessions.as_ref().map_or(0, |s| s.known.len()), Ordering::Relaxed);
    }
    tracing::info!(engine = %set.name, "engine thread stopped");
}

/// Chooses the free slot for `job` and fills its KV with the longest reusable prefix of the
/// prompt: held in place by a slot, restored from the host cache, or from the job's session
/// file. Returns the slot, how many prompt tokens its KV now covers (at most all but one),
/// and where they came from.
#[allow(clippy::too_many_arguments)]
fn place(
    ctx: &mut LlamaContext<'_>,
    cache: &mut PrefixCache,
    states: &mut [Option<SeqState>],
    held: &mut [Held],
    slots: &[Option<Seq>],
    sessions: Option<&mut SessionFiles>,
    job: &Job,
    ids: &[i32],
) -> (usize, usize, Option<&'static str>) {
    let limit = ids.len().saturating_sub(1);
    let free = || (0..slots.len()).filter(|&i| slots[i].is_none());
    // The free slot holding the longest prefix (the most recent on a tie).
    let (best, in_place) = free()
        .map(|i| (i, common_prefix(&held[i].tokens, ids).min(limit)))
        .max_by_key(|&(i, n)| (n, held[i].last_used))
        .unwrap_or((0, 0));
    let from_host = cache.lookup(ids).map(|(e, n)| (e, n.min(limit)));
    let host_n = from_host.map_or(0, |(_, n)| n);
    let (mut cached, mut from) = (0, None);
    let slot = if cache.enabled() && in_place >= MIN_REUSE && in_place >= host_n {
        let _ = ctx.clear_kv_cache_seq(Some(best as u32), Some(in_place as u32), None);
        cached = in_place;
        from = Some("slot");
        best
    } else {
        let victim = take_free_slot(ctx, cache, states, held, slots);
        if let Some((e, n)) = from_host.filter(|&(_, n)| n >= MIN_REUSE) {
            let restored = states[e].as_ref().is_some_and(|st| ctx.state_seq_set(st, victim as i32).is_ok());
            if restored && ctx.clear_kv_cache_seq(Some(victim as u32), Some(n as u32), None).is_ok() {
                cached = n;
                from = Some("host");
            } else {
                free_seq(ctx, victim);
            }
        }
        victim
    };
    held[slot].tokens.clear();
    // A session's file wins when it covers more of the prompt than memory does.
    if let (Some(sessions), Some(id)) = (sessions, &job.session) {
        match sessions.restore(ctx, id, slot as i32, &job.tokens, cached) {
            Restored::Tokens(n) => (cached, from) = (n, Some("session")),
            Restored::Cleared => (cached, from) = (0, None),
            Restored::Untouched => {}
        }
    }
    (slot, cached, from)
}

/// The least useful free slot, emptied: one holding nothing, else the least recently used;
/// what it holds goes to the host cache first. There must be a free slot.
fn take_free_slot(
    ctx: &mut LlamaContext<'_>,
    cache: &mut PrefixCache,
    states: &mut [Option<SeqState>],
    held: &mut [Held],
    slots: &[Option<Seq>],
) -> usize {
    let victim = (0..slots.len())
        .filter(|&i| slots[i].is_none())
        .min_by_key(|&i| (!held[i].tokens.is_empty(), held[i].last_used))
        .unwrap_or(0);
    if cache.enabled() && !held[victim].tokens.is_empty() {
        let tokens = std::mem::take(&mut held[victim].tokens);
        keep(ctx, cache, states, victim, &tokens, false);
    }
    free_seq(ctx, victim);
    held[victim].tokens.clear();
    victim
}

/// Saves what `slot`'s KV holds (`tokens`) as a host-cache entry, when the cache places it,
/// and drops the states of the entries it evicts for it.
fn keep(
    ctx: &LlamaContext<'_>,
    cache: &mut PrefixCache,
    states: &mut [Option<SeqState>],
    slot: usize,
    tokens: &[i32],
    pinned: bool,
) {
    let placed = cache.insert(tokens, pinned);
    for e in placed.evicted {
        states[e] = None;
    }
    if let Some(e) = placed.entry {
        match ctx.state_seq_get(slot as i32, LlamaStateSeqFlags::empty()) {
            Ok(st) => states[e] = Some(st),
            Err(err) => {
                tracing::warn!(error = %err, "could not keep a prefix in the host cache");
                cache.forget(e);
            }
        }
    }
}

fn free_seq(ctx: &mut LlamaContext<'_>, i: usize) {
    let _ = ctx.clear_kv_cache_seq(Some(i as u32), None, None);
}
