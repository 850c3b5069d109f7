//! What crosses between the async side and an engine thread: a [`Job`] with its sampling
//! parameters ([`GenParams`], grammar, logprobs, `n`), the [`Event`]s it answers with, and the
//! bounded two-priority [`Queue`] between them, whose [`Ticket`]s count the engine's capacity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::Priority;

/// Sampling settings as the engine applies them.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub seed: u32,
    pub max_tokens: u32,
    pub stops: Vec<String>,
    /// llama-server's `ignore_eos`: end-of-generation tokens are never sampled.
    pub ignore_eos: bool,
    /// OpenAI's `logit_bias`: token id → bias added to its logit (−∞ bans it).
    pub logit_bias: Vec<(i32, f32)>,
    /// Report each sampled token's log-probability and this many alternatives (0–20).
    pub top_logprobs: Option<u8>,
    /// Constrained decoding: a GBNF grammar (checked to parse before the job is queued).
    pub grammar: Option<Arc<Grammar>>,
    /// Special tokens are written as their text (a tool-call format whose marker is one:
    /// Mistral's `[TOOL_CALLS]`, Llama's `<|python_tag|>`), for the output parser to see.
    pub show_special: bool,
    /// Choices: the prompt is prefilled once, in the first choice's slot, and its KV copied
    /// to the others', each of which then samples with its own seed (`seed + index`).
    pub n: u32,
}

/// A GBNF grammar whose root is `root`: from the first token, or (lazy) only once one of
/// `triggers` has been generated, the trigger itself being the grammar's first text.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Grammar {
    pub gbnf: String,
    pub triggers: Vec<String>,
}

/// One sampled token's log-probability, with its bytes, and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(Vec<u8>, f32)>,
}

pub struct Job {
    pub tokens: Vec<LlamaToken>,
    pub params: GenParams,
    pub tx: UnboundedSender<Event>,
    pub enqueued: Instant,
    /// Keep this prompt's prefix in the cache for good (a warmed `prompts/` entry).
    pub pin_prefix: bool,
    /// Its place in the engine's capacity, given back when the job's last choice ends (set
    /// by `try_push`; shared by its choices).
    pub ticket: Option<Arc<Ticket>>,
    /// The session it continues (hashed id, bound to the API key).
    pub session: Option<String>,
}

impl Job {
    /// The same job for another of its choices: the same prompt, reply channel and ticket.
    pub(super) fn follower(&self) -> Job {
        Job {
            tokens: self.tokens.clone(),
            params: self.params.clone(),
            tx: self.tx.clone(),
            enqueued: self.enqueued,
            pin_prefix: false,
            ticket: self.ticket.clone(),
            session: None,
        }
    }
}

/// Every slot is busy and the queue is at its bound (or the engine has stopped).
#[derive(Debug)]
pub struct EngineFull;

/// One accepted job's share of the engine's capacity (slots + queue depth); returned on drop.
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub queued_ms: f64,
    pub cache_n: u64,
    /// Where the `cache_n` reused tokens came from: "slot" (kept in place), "host" (the
    /// host-memory prefix cache) or "session" (the session's file); none when cold.
    pub cache_from: Option<&'static str>,
    pub prompt_n: u64,
    pub prompt_ms: f64,
    pub predicted_n: u64,
    pub predicted_ms: f64,
}

#[derive(Debug)]
pub enum Event {
    /// Text of choice `choice` safe to send now (may be empty when a stop string or a UTF-8
    /// character holds it back), and the log-probabilities of the tokens sampled since the
    /// last event, when asked for.
    Text {
        choice: u32,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// One input's embedding (embedding deployments).
    Embedding(Vec<f32>),
    /// Choice `choice` ended; the job ends when all its choices have.
    Done {
        choice: u32,
        finish: &'static str,
        /// The stop string that ended it (`finish` is then `stop`).
        stop: Option<String>,
        prompt_tokens: u64,
        completion_tokens: u64,
        timings: Timings,
    },
    Error(String),
}

/// The bounded two-priority wait queue between the async side and the engine thread.
pub struct Queue {
    state: Mutex<QueueState>,
    pub(super) cv: Condvar,
    /// Occupied sequence slots, as of the engine's last step (reported in /v1/models).
    pub(super) active: AtomicUsize,
    /// KV cells holding tokens (running sequences and the prefixes kept in idle slots), and
    /// the sessions whose state this engine has saved, as of its last step.
    pub(super) kv_cells: AtomicUsize,
    pub(super) sessions: AtomicUsize,
    /// Jobs accepted and not yet ended, queued or running: the engine is full when this
    /// reaches `slots + depth` (every slot busy and the queue at its bound).
    in_system: Arc<AtomicUsize>,
    slots: usize,
}

pub(super) struct QueueState {
    pub(super) interactive: VecDeque<Job>,
    pub(super) batch: VecDeque<Job>,
    pub(super) depth: usize,
    pub(super) closed: bool,
}

impl Queue {
    /// `depth` jobs may wait beyond the `slots` the engine runs at once.
    pub fn new(slots: usize, depth: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                interactive: VecDeque::new(),
                batch: VecDeque::new(),
                depth,
                closed: false,
            }),
            cv: Condvar::new(),
            active: AtomicUsize::new(0),
            kv_cells: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            in_system: Arc::new(AtomicUsize::new(0)),
            slots,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues unless the queue is at its bound (the engine is then full) or closed.
    pub fn try_push(&self, job: Job, prio: Priority) -> Result<(), EngineFull> {
        let mut st = self.lock();
        // Jobs whose clients already left do not hold places in the queue.
        st.interactive.retain(|j| !j.tx.is_closed());
        st.batch.retain(|j| !j.tx.is_closed());
        // Full when every slot is busy and the queue is at its bound. A job gives its place
        // back before its last event is sent, so a client that answers at once finds it.
        if st.closed || self.in_system.load(Ordering::Acquire) >= self.slots + st.depth {
            return Err(EngineFull);
        }
        self.in_system.fetch_add(1, Ordering::AcqRel);
        let mut job = job;
        job.ticket = Some(Arc::new(Ticket(self.in_system.clone())));
        match prio {
            Priority::Interactive => st.interactive.push_back(job),
            Priority::Batch => st.batch.push_back(job),
        }
        drop(st);
        self.cv.notify_one();
        Ok(())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn kv_cells(&self) -> usize {
        self.kv_cells.load(Ordering::Relaxed)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> usize {
        let st = self.lock();
        st.interactive.len() + st.batch.len()
    }

    /// For the embedding thread: waits for work, then takes up to `max` jobs whose tokens
    /// fit in `budget` together (at least one). `None` once the queue is closed and empty.
    pub fn take_batch(&self, max: usize, budget: usize) -> Option<Vec<Job>> {
        let mut st = self.lock();
        loop {
            st.interactive.retain(|j| !j.tx.is_closed());
            st.batch.retain(|j| !j.tx.is_closed());
            if !st.interactive.is_empty() || !st.batch.is_empty() {
                break;
            }
            if st.closed {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let mut out: Vec<Job> = Vec::new();
        let mut used = 0;
        while out.len() < max {
            let next_len = st.interactive.front().or(st.batch.front()).map(|j| j.tokens.len());
            match next_len {
                Some(n) if out.is_empty() || used + n <= budget => {
                    used += n;
                    if let Some(j) = st.interactive.pop_front().or_else(|| st.batch.pop_front()) {
                        out.push(j);
                    }
                }
                _ => break,
            }
        }
        Some(out)
    }

    pub fn is_open(&self) -> bool {
        !self.lock().closed
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

/// Held by an engine thread: however its loop ends (a panic included), the queue closes, so
/// health turns red and new jobs are refused instead of waiting for a thread that is gone.
pub struct CloseOnExit(pub Arc<Queue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.close();
    }
}
