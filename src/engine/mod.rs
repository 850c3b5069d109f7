//! The embedded llama.cpp engine: the `local` deployment kind.
//!
//! [`LocalBackend`] is the async side: it validates what the engine can honour (a 400
//! naming any parameter it cannot, never a silent ignore), renders the chat template,
//! tokenizes, checks the context, and hands a job to the engine thread ([`worker`])
//! through a bounded two-priority queue. When every slot is busy and the queue is at its
//! bound, the engine is full and the router falls back to the alias's next deployment.
//! Events from the thread become OpenAI chunks, or one body for a non-streamed request.

pub mod embed;
mod error;
pub mod model_info;
pub mod prefix;
pub mod sessions;
pub mod text;
pub mod worker;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError, BackendReply, BackendRequest, Chunk};
use crate::config::{DeploymentConfig, LocalConfig};
use crate::protocol::chunk::{self, Head};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Prompt, Usage, ValidRequest};
pub use error::{EngineError, InitError};
use model_info::ModelInfo;
use worker::{EngineSettings, Event, GenParams, Job, Queue, Timings};

/// Whether ggml's tiled matmul is off in this process: decided once, before ggml's first
/// matmul reads `GGML_CPU_TILED_MM`.
static TILED_MATMUL_OFF: OnceLock<bool> = OnceLock::new();

/// Decides, once per process, whether ggml's tiled matmul is turned off. ggml multiplies by a
/// Q6_K matrix with a tiled kernel for 8 rows and more and a dot-product kernel for fewer;
/// the two round differently, so a row's result depends on how many rows share its batch.
/// A `deterministic` deployment needs it off; off, prompt processing is slower for every
/// deployment in the process (measured in the README), so it is off only when one asks
/// for it (or the user set `GGML_CPU_TILED_MM` themselves). Returns the decision.
pub fn decide_batch_invariant_matmul(wanted: bool) -> bool {
    *TILED_MATMUL_OFF.get_or_init(|| match std::env::var("GGML_CPU_TILED_MM") {
        Ok(v) => v.trim().parse::<i64>().is_ok_and(|n| n == 0),
        Err(_) if wanted => {
            // SAFETY: called while starting the gateway, before any engine thread runs ggml.
            std::env::set_var("GGML_CPU_TILED_MM", "0");
            true
        }
        Err(_) => false,
    })
}

/// llama.cpp's backend, initialised once per process with ggml's CPU variants loaded.
pub fn llama_backend() -> Result<&'static LlamaBackend, InitError> {
    static B: OnceLock<Result<LlamaBackend, InitError>> = OnceLock::new();
    B.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        let dir = backends_dir();
        let variant = std::env::var("TOLLGATE_CPU_VARIANT").ok().filter(|v| !v.is_empty());
        match (&dir, &variant) {
            (Some(d), Some(v)) => load_variant(d, v)?,
            (Some(d), None) => llama_cpp_2::llama_backend::load_backends_from_path(d),
            (None, _) => tracing::warn!("no ggml backends directory found; set TOLLGATE_GGML_BACKENDS"),
        }
        let devices = llama_cpp_2::list_llama_ggml_backend_devices();
        tracing::info!(
            dir = ?dir,
            cpu_variant = variant.as_deref().unwrap_or("best for this CPU"),
            devices = ?devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect::<Vec<_>>(),
            "ggml backends loaded"
        );
        LlamaBackend::init().map_err(|e| InitError::Llama(e.to_string()))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Loads one CPU variant (`TOLLGATE_CPU_VARIANT=haswell`, say) instead of the best one for
/// this CPU. Variants round differently; pinning one gives every machine that can run it the
/// same arithmetic (a fleet of mixed CPUs answering alike, or a test of another machine's).
fn load_variant(dir: &std::path::Path, v: &str) -> Result<(), InitError> {
    let file = dir.join(format!("libggml-cpu-{v}.so"));
    if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || !file.is_file() {
        let mut known: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                Some(n.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?.to_owned())
            })
            .collect();
        known.sort();
        return Err(InitError::UnknownVariant { variant: v.to_owned(), dir: dir.to_owned(), known });
    }
    let path = std::ffi::CString::new(file.to_string_lossy().as_bytes()).map_err(InitError::VariantPath)?;
    // SAFETY: a NUL-terminated path; ggml returns null when the library cannot be loaded or
    // reports that this CPU cannot run it, and registers the backend otherwise.
    let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(path.as_ptr()) };
    if reg.is_null() {
        return Err(InitError::VariantUnsupported { variant: v.to_owned(), file });
    }
    Ok(())
}

/// Where ggml's CPU variants are: `$TOLLGATE_GGML_BACKENDS`, else `ggml-backends/` beside
/// the executable (an installed layout), else the directory the build prepared.
fn backends_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("TOLLGATE_GGML_BACKENDS") {
        return Some(d.into());
    }
    if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.join("ggml-backends"))) {
        if d.is_dir() {
            return Some(d);
        }
    }
    option_env!("TOLLGATE_BUILD_GGML_BACKENDS").map(Into::into)
}

pub struct LocalBackend {
    name: String,
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    queue: Arc<Queue>,
    info: ModelInfo,
    ctx_per_seq: u32,
    embeddings: bool,
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // The thread finishes what it runs and exits; the model is freed with the last Arc.
        self.queue.close();
    }
}

impl LocalBackend {
    pub async fn start(dep: &DeploymentConfig, l: &LocalConfig) -> Result<Arc<LocalBackend>, EngineError> {
        if l.deterministic && !decide_batch_invariant_matmul(true) {
            return Err(EngineError::NeedsTiledMatmulOff { deployment: dep.name.clone() });
        }
        let backend = llama_backend()?;
        let path = l.path.clone();
        let size = model_info::precheck(&path)?;
        let gpu_layers = l.gpu_layers;
        let loaded = tokio::task::spawn_blocking(move || {
            let sha =
                model_info::sha256_cached(&path).map_err(|error| EngineError::Hash { path: path.clone(), error })?;
            let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
            let model = LlamaModel::load_from_file(backend, &path, &params)
                .map_err(|error| EngineError::Load { path: path.clone(), error })?;
            Ok::<_, EngineError>((sha, model))
        })
        .await
        .map_err(EngineError::LoaderPanicked)??;
        let (sha256, model) = loaded;
        let model = Arc::new(model);
        let arch = model.meta_val_str("general.architecture").unwrap_or_else(|_| "unknown".into());
        let (template, tpl_name, tpl_source) = match (&l.chat_template, model.chat_template(None)) {
            (Some(name), _) => {
                (LlamaChatTemplate::new(name).map_err(EngineError::TemplateName)?, name.clone(), "config")
            }
            (None, Ok(t)) => {
                let shown = t.to_str().map(|s| s.chars().take(80).collect()).unwrap_or_default();
                (t, shown, "gguf")
            }
            (None, Err(_)) => {
                let name = model_info::builtin_template_for(&arch);
                tracing::info!(model = %l.path.display(), architecture = %arch, template = name, "the model has no chat template; using llama.cpp's built-in one for its architecture");
                (LlamaChatTemplate::new(name).map_err(EngineError::TemplateName)?, name.to_owned(), "builtin")
            }
        };
        let probe = [LlamaChatMessage::new("user".into(), "hi".into()).map_err(EngineError::ProbeMessage)?];
        model.apply_chat_template(&template, &probe, true).map_err(|error| EngineError::Template {
            path: l.path.clone(),
            template: tpl_name.clone(),
            error,
        })?;
        let ctx_per_seq = l.context.min(model.n_ctx_train().max(64));
        let info = ModelInfo {
            path: l.path.display().to_string(),
            sha256,
            size_bytes: size,
            architecture: arch,
            name: model.meta_val_str("general.name").ok(),
            quantization: model
                .meta_val_str("general.file_type")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(model_info::file_type_name)
                .unwrap_or_else(|| "unknown".into()),
            parameters: model.n_params(),
            context_trained: model.n_ctx_train(),
            context: ctx_per_seq,
            parallel: l.parallel,
            chat_template: tpl_name,
            chat_template_source: tpl_source,
        };
        let queue = Arc::new(Queue::new(l.parallel as usize, l.queue_depth.max(1)));
        let threads = l
            .threads
            .map(|t| t as i32)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(4));
        let settings = EngineSettings {
            name: dep.name.clone(),
            ctx_per_seq,
            parallel: l.parallel,
            n_batch: l.batch,
            n_ubatch: l.ubatch,
            threads,
            cache_tokens: l.prefix_cache_tokens,
            cache_entries: l.prefix_cache_entries,
            sessions: l.sessions_dir.clone().filter(|_| !dep.embeddings).map(|dir| sessions::SessionFiles {
                dir,
                ttl: l.session_ttl,
                max: l.max_sessions,
                known: Default::default(),
            }),
            deterministic: l.deterministic,
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let embeddings = dep.embeddings;
        let (m, q) = (model.clone(), queue.clone());
        std::thread::Builder::new()
            .name(format!("engine-{}", dep.name))
            .spawn(move || {
                if embeddings {
                    embed::run(backend, m, settings, q, ready_tx)
                } else {
                    worker::run(backend, m, settings, q, ready_tx)
                }
            })
            .map_err(EngineError::Thread)?;
        ready_rx.await.map_err(|_| EngineError::ThreadDied)??;
        tracing::info!(
            deployment = %dep.name,
            model = %info.path,
            sha256 = %info.sha256,
            architecture = %info.architecture,
            quantization = %info.quantization,
            parameters = info.parameters,
            context_trained = info.context_trained,
            context = info.context,
            chat_template = %info.chat_template,
            "model loaded"
        );
        Ok(Arc::new(LocalBackend {
            name: dep.name.clone(),
            model,
            template,
            queue,
            info,
            ctx_per_seq,
            embeddings: dep.embeddings,
        }))
    }

    pub fn info_ref(&self) -> &ModelInfo {
        &self.info
    }

    /// Prefills each named system prompt and keeps its prefix in the cache for good, so the
    /// first request that uses one is already warm. The prefix is what the chat template
    /// renders before the first user text: the common tokens of two renderings that differ
    /// only there.
    pub async fn warm_prompts(&self, prompts: &std::collections::BTreeMap<String, String>) {
        for (name, text) in prompts {
            let render = |user: &str| -> Option<Vec<llama_cpp_2::token::LlamaToken>> {
                let chat = [
                    LlamaChatMessage::new("system".into(), text.clone()).ok()?,
                    LlamaChatMessage::new("user".into(), user.into()).ok()?,
                ];
                let s = self.model.apply_chat_template(&self.template, &chat, true).ok()?;
                Some(self.model.vocab().tokenize(s.as_bytes(), true, true))
            };
            let (Some(a), Some(b)) = (render("A"), render("B")) else { continue };
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if common < prefix::MIN_REUSE || common >= self.ctx_per_seq as usize {
                continue;
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut params = self.params_default();
            params.max_tokens = 1;
            let job = Job {
                tokens: a[..common].to_vec(),
                params,
                tx,
                enqueued: Instant::now(),
                pin_prefix: true,
                ticket: None,
                session: None,
            };
            if self.queue.try_push(job, crate::backend::Priority::Batch).is_err() {
                continue;
            }
            while let Some(ev) = rx.recv().await {
                if matches!(ev, Event::Done { .. } | Event::Error(_)) {
                    break;
                }
            }
            tracing::info!(deployment = %self.name, prompt = %name, tokens = common, "prompt prefix warmed");
        }
    }

    fn params_default(&self) -> GenParams {
        GenParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 1,
            stops: Vec::new(),
            ignore_eos: false,
        }
    }

    /// Refuses what the engine cannot honour, naming the parameter.
    fn check_supported(&self, req: &ValidRequest) -> Result<(), ApiError> {
        if (req.endpoint == Endpoint::Embeddings) != self.embeddings {
            let what = if self.embeddings { "serves embeddings only" } else { "does not serve embeddings" };
            return Err(ApiError::invalid_request(format!("The deployment '{}' {what}.", self.name), Some("model")));
        }
        if req.endpoint == Endpoint::Embeddings {
            let all_text = match req.body.get("input") {
                Some(Value::Array(a)) => a.iter().all(Value::is_string),
                _ => true,
            };
            if !all_text {
                return Err(ApiError::invalid_request(
                    "The local engine embeds text inputs, not token arrays.",
                    Some("input"),
                ));
            }
            return Ok(());
        }
        let b = &req.body;
        let set = |k: &str| b.get(k).is_some_and(|v| !v.is_null());
        for p in [
            "tools",
            "tool_choice",
            "functions",
            "function_call",
            "logit_bias",
            "top_logprobs",
            "suffix",
            "audio",
            "modalities",
            "prediction",
        ] {
            if set(p) {
                return Err(ApiError::unsupported_param(p, "local engine"));
            }
        }
        if b.get("logprobs").is_some_and(|v| v.as_bool() == Some(true) || v.as_u64().is_some_and(|n| n > 0)) {
            return Err(ApiError::unsupported_param("logprobs", "local engine"));
        }
        if b.get("echo").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::unsupported_param("echo", "local engine"));
        }
        if b.get("best_of").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(ApiError::unsupported_param("best_of", "local engine"));
        }
        if let Some(rf) = b.get("response_format").filter(|v| !v.is_null()) {
            if rf.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::unsupported_param("response_format", "local engine"));
            }
        }
        if req.sampling.n > 1 {
            return Err(ApiError::invalid_request(
                "The local engine generates one choice per request: 'n' must be 1.",
                Some("n"),
            )
            .with_code("unsupported_parameter"));
        }
        Ok(())
    }

    fn render(&self, req: &ValidRequest) -> Result<String, ApiError> {
        match &req.prompt {
            Prompt::Text(t) => Ok(t.clone()),
            Prompt::Chat(msgs) => {
                let chat = msgs
                    .iter()
                    .map(|m| {
                        let role = match m.role.as_str() {
                            "developer" => "system",
                            "tool" | "function" => "user",
                            r => r,
                        };
                        LlamaChatMessage::new(role.to_owned(), m.content.clone())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::invalid_request("A message contains a NUL character.", Some("messages")))?;
                self.model
                    .apply_chat_template(&self.template, &chat, true)
                    .map_err(|e| ApiError::internal(format!("The chat template could not be applied: {e}")))
            }
            Prompt::Embed(_) => Err(ApiError::invalid_request("Embeddings are not served here.", Some("input"))),
        }
    }

    fn params(&self, req: &ValidRequest, prompt_len: usize, seed: u32) -> GenParams {
        let s = &req.sampling;
        let room = (self.ctx_per_seq as usize).saturating_sub(prompt_len) as u32;
        GenParams {
            temperature: s.temperature.unwrap_or(1.0) as f32,
            top_p: s.top_p.unwrap_or(1.0) as f32,
            // Past the vocabulary, top-k keeps everything: the same as off.
            top_k: s.top_k.filter(|&k| k > 0 && k < i64::from(self.model.n_vocab())).unwrap_or(0) as i32,
            min_p: s.min_p.unwrap_or(0.0) as f32,
            presence_penalty: s.presence_penalty.unwrap_or(0.0) as f32,
            frequency_penalty: s.frequency_penalty.unwrap_or(0.0) as f32,
            repetition_penalty: s.repetition_penalty.unwrap_or(1.0) as f32,
            seed: match s.seed {
                // 0xFFFFFFFF asks llama.cpp for a random seed; keep a given seed fixed.
                Some(v) => (v as u64 & 0xFFFF_FFFF).min(0xFFFF_FFFE) as u32,
                // The gateway's choice, recorded with the request.
                None => seed.min(0xFFFF_FFFE),
            },
            max_tokens: s.max_tokens.unwrap_or(room).min(room.max(1)),
            stops: s.stop.clone(),
            ignore_eos: req.body.get("ignore_eos").and_then(Value::as_bool).unwrap_or(false),
        }
    }
}

impl LocalBackend {
    /// `/v1/embeddings`: one job per input, answered in order.
    fn embed(&self, br: &BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        let prepared = (|| {
            self.check_supported(&br.req).map_err(BackendError::Rejected)?;
            let Prompt::Embed(inputs) = &br.req.prompt else {
                return Err(BackendError::Rejected(ApiError::invalid_request("Missing 'input'.", Some("input"))));
            };
            let mut rxs = Vec::with_capacity(inputs.len());
            let mut tokens_total = 0u64;
            for (i, text) in inputs.iter().enumerate() {
                let tokens = self.model.vocab().tokenize(text.as_bytes(), true, false);
                if tokens.is_empty() || tokens.len() > self.ctx_per_seq as usize {
                    return Err(BackendError::Rejected(ApiError::invalid_request(
                        format!(
                            "Input {i} is {} tokens; this model embeds 1 to {} tokens.",
                            tokens.len(),
                            self.ctx_per_seq
                        ),
                        Some("input"),
                    )));
                }
                tokens_total += tokens.len() as u64;
                let (tx, rx) = mpsc::unbounded_channel();
                let job = Job {
                    tokens,
                    params: self.params_default(),
                    tx,
                    enqueued: Instant::now(),
                    pin_prefix: false,
                    ticket: None,
                    session: None,
                };
                self.queue.try_push(job, br.priority).map_err(|_| BackendError::Full)?;
                rxs.push(rx);
            }
            Ok((rxs, tokens_total))
        })();
        let base64 = br.req.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let model = self.name.clone();
        async move {
            let (rxs, tokens) = prepared?;
            let mut data = Vec::with_capacity(rxs.len());
            for (i, mut rx) in rxs.into_iter().enumerate() {
                let v = match rx.recv().await {
                    Some(Event::Embedding(v)) => v,
                    Some(Event::Error(e)) => return Err(BackendError::Internal(e)),
                    _ => return Err(BackendError::Internal("the engine stopped before the request finished".into())),
                };
                let embedding =
                    if base64 { Value::String(crate::backend::base64_f32(v.into_iter())) } else { json!(v) };
                data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
            }
            let u = Usage { prompt_tokens: tokens, completion_tokens: 0, total_tokens: tokens, cached_tokens: None };
            let mut body = Map::new();
            body.insert("object".into(), "list".into());
            body.insert("data".into(), Value::Array(data));
            body.insert("model".into(), Value::String(model));
            body.insert("usage".into(), json!({"prompt_tokens": tokens, "total_tokens": tokens}));
            Ok(BackendReply::Full { body, usage: Some(u) })
        }
        .boxed()
    }
}

impl Backend for LocalBackend {
    fn call(&self, br: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        if br.req.endpoint == Endpoint::Embeddings || self.embeddings {
            return self.embed(&br);
        }
        let prepared = (|| {
            let req = &br.req;
            self.check_supported(req).map_err(BackendError::Rejected)?;
            let text = self.render(req).map_err(BackendError::Rejected)?;
            let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
            if tokens.is_empty() {
                return Err(BackendError::Rejected(ApiError::invalid_request("The prompt is empty.", Some("prompt"))));
            }
            if tokens.len() >= self.ctx_per_seq as usize {
                let param = if req.endpoint == Endpoint::Chat { "messages" } else { "prompt" };
                return Err(BackendError::Rejected(
                    ApiError::invalid_request(
                        format!(
                            "This model's maximum context length is {} tokens. However, your prompt is {} tokens, \
                             which leaves no room for the completion.",
                            self.ctx_per_seq,
                            tokens.len()
                        ),
                        Some(param),
                    )
                    .with_code("context_length_exceeded"),
                ));
            }
            let params = self.params(req, tokens.len(), br.seed);
            let (tx, rx) = mpsc::unbounded_channel();
            let job = Job {
                tokens,
                params,
                tx,
                enqueued: Instant::now(),
                pin_prefix: false,
                ticket: None,
                session: br.session.clone(),
            };
            self.queue.try_push(job, br.priority).map_err(|_| BackendError::Full)?;
            Ok(rx)
        })();
        let endpoint = br.req.endpoint;
        let fingerprint = format!("tollgate-{}", &self.info.sha256[..12.min(self.info.sha256.len())]);
        let head = Head::new(
            endpoint,
            chunk::response_id(endpoint),
            crate::clock::now_s(),
            self.name.clone(),
            Some(fingerprint),
        );
        let stream = br.req.stream;
        async move {
            let rx = prepared?;
            if stream {
                Ok(BackendReply::Stream(chunks(head, rx)))
            } else {
                full(head, rx).await
            }
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), crate::backend::Unhealthy>> {
        let ok = self.queue.is_open();
        async move {
            if ok {
                Ok(())
            } else {
                Err(crate::backend::Unhealthy::Stopped)
            }
        }
        .boxed()
    }

    fn info(&self) -> Option<Value> {
        serde_json::to_value(&self.info).ok().map(|mut v| {
            v["waiting"] = self.queue.waiting().into();
            v["active"] = self.queue.active().into();
            v["embeddings"] = self.embeddings.into();
            v
        })
    }
}

fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: Some(cached),
    }
}

/// llama-server's `timings` object.
fn timings_json(t: &Timings) -> Value {
    let per = |ms: f64, n: u64| if n > 0 { ms / n as f64 } else { 0.0 };
    let rate = |ms: f64, n: u64| {
        if ms > 0.0 {
            n as f64 * 1000.0 / ms
        } else {
            0.0
        }
    };
    json!({
        "cache_n": t.cache_n,
        "prompt_n": t.prompt_n,
        "prompt_ms": t.prompt_ms,
        "prompt_per_token_ms": per(t.prompt_ms, t.prompt_n),
        "prompt_per_second": rate(t.prompt_ms, t.prompt_n),
        "predicted_n": t.predicted_n,
        "predicted_ms": t.predicted_ms,
        "predicted_per_token_ms": per(t.predicted_ms, t.predicted_n),
        "predicted_per_second": rate(t.predicted_ms, t.predicted_n),
        "queued_ms": t.queued_ms,
        // tollgate's own: where the reused prompt tokens came from.
        "cache_from": t.cache_from,
    })
}

fn chunks(head: Head, rx: mpsc::UnboundedReceiver<Event>) -> crate::backend::EventStream {
    // The role chunk goes out with the first engine event, not before: until the engine has
    // admitted and prefilled the request, the router may still time it out and fall back.
    let mut role = head.is_chat();
    let mut done = false;
    let events = tokio_stream_from(rx).map(Some).chain(futures::stream::iter([None])).flat_map(move |ev| {
        let mut out: Vec<Result<Chunk, BackendError>> = Vec::with_capacity(3);
        if role && matches!(ev, Some(Event::Text(_)) | Some(Event::Done { .. })) {
            role = false;
            out.push(Ok(head.role_chunk()));
        }
        match ev {
            Some(Event::Text(t)) => out.push(Ok(head.text_chunk(t))),
            Some(Event::Done { finish, prompt_tokens, completion_tokens, timings }) => {
                done = true;
                let mut last = head.finish_chunk(finish);
                last.insert("timings".into(), timings_json(&timings));
                let u = usage(prompt_tokens, completion_tokens, timings.cache_n);
                out.push(Ok(last));
                out.push(Ok(head.usage_chunk(u.to_json())));
            }
            Some(Event::Error(e)) => {
                done = true;
                out.push(Err(BackendError::Internal(e)));
            }
            Some(Event::Embedding(_)) => {}
            // The engine went away without finishing this request.
            None if !done => {
                out.push(Err(BackendError::Internal("the engine stopped before the request finished".into())))
            }
            None => {}
        }
        futures::stream::iter(out)
    });
    events.boxed()
}

fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Event>) -> impl futures::Stream<Item = Event> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn full(head: Head, mut rx: mpsc::UnboundedReceiver<Event>) -> Result<BackendReply, BackendError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Error(e) => return Err(BackendError::Internal(e)),
            Event::Embedding(_) => {}
            Event::Done { finish, prompt_tokens, completion_tokens, timings } => {
                let u = usage(prompt_tokens, completion_tokens, timings.cache_n);
                let mut body = head.body(text, None, finish, Some(u));
                body.insert("timings".into(), timings_json(&timings));
                return Ok(BackendReply::Full { body, usage: Some(u) });
            }
        }
    }
    Err(BackendError::Internal("the engine stopped before the request finished".into()))
}
