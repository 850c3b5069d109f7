//! The embedding engine thread: a local deployment with `embeddings = true` serves
//! `/v1/embeddings` from llama.cpp's pooled embeddings (mean pooling), L2-normalised as
//! OpenAI's are. Each step packs waiting inputs, one sequence each, into one batch (an input
//! must fit whole in a batch: pooling needs all its tokens at once), decodes it, and reads
//! one vector per sequence.

use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use super::job::{CloseOnExit, Event, Job, Queue};
use super::worker::EngineSettings;

pub fn run(
    backend: &'static LlamaBackend,
    model: Arc<LlamaModel>,
    set: EngineSettings,
    queue: Arc<Queue>,
    ready: tokio::sync::oneshot::Sender<Result<(), super::EngineError>>,
) {
    let per_seq = set.ctx_per_seq;
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(per_seq.saturating_mul(set.parallel)))
        .with_n_batch(per_seq)
        .with_n_ubatch(per_seq)
        .with_n_seq_max(set.parallel)
        .with_n_threads(set.threads)
        .with_n_threads_batch(set.threads)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(super::EngineError::EmbeddingContext(e)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let _close = CloseOnExit(queue.clone());
    let mut batch = LlamaBatch::new(per_seq as usize, set.parallel as i32);
    loop {
        let Some(mut jobs) = queue.take_batch(set.parallel as usize, per_seq as usize) else { break };
        batch.clear();
        let mut ok = true;
        for (seq, job) in jobs.iter().enumerate() {
            for (pos, t) in job.tokens.iter().enumerate() {
                ok &= batch.add(*t, pos as i32, &[seq as i32], true).is_ok();
            }
        }
        let started = Instant::now();
        let res =
            if ok { ctx.decode(&mut batch).map_err(|e| e.to_string()) } else { Err("the batch overflowed".into()) };
        for (seq, job) in jobs.iter_mut().enumerate() {
            let ev = match &res {
                Ok(()) => match ctx.embeddings_seq_ith(seq as i32) {
                    Ok(v) => {
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
                        Event::Embedding(v.iter().map(|x| x / norm).collect())
                    }
                    Err(e) => Event::Error(format!("no embedding for the input: {e}")),
                },
                Err(e) => Event::Error(format!("the engine failed to decode: {e}")),
            };
            job.ticket.take();
            let _ = job.tx.send(ev);
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        }
        tracing::debug!(inputs = jobs.len(), ms = started.elapsed().as_secs_f64() * 1e3, "embedded");
        drop::<Vec<Job>>(jobs);
    }
}
