//! The embedded llama.cpp engine: the `local` deployment kind.
//!
//! [`LocalBackend`] is the async side: [`request`] checks what the engine can honour (a 400
//! naming any parameter it cannot, never a silent ignore), renders the chat template (the
//! GGUF's Jinja through `crate::chat::template`, else llama.cpp's built-in one), tokenizes,
//! checks the context and compiles the grammar that `response_format` or `tools` ask for
//! ([`grammar`]); the job goes to the engine thread ([`worker`]) through a bounded
//! two-priority queue. When every slot is busy and the queue is at its bound, the engine is
//! full and the router falls back to the alias's next deployment. Events from the thread
//! become OpenAI chunks, or one body for a non-streamed request ([`reply`]).

pub mod embed;
mod error;
pub mod grammar;
pub mod job;
pub mod model_info;
pub mod prefix;
mod reply;
mod request;
mod sample;
pub mod sessions;
pub mod text;
pub mod worker;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError, BackendReply, BackendRequest};
use crate::chat::reasoning::ReasoningTags;
use crate::chat::template::ChatTemplate;
use crate::chat::tools::ToolFormat;
use crate::config::{DeploymentConfig, LocalConfig};
use crate::protocol::chunk::{self, Head};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Prompt, Usage, ValidRequest};
pub use error::{EngineError, InitError};
use job::{Event, GenParams, Job, Queue};
use model_info::ModelInfo;
use worker::EngineSettings;

/// How chat messages become a prompt.
pub enum ChatFormat {
    /// A Jinja template (the GGUF's, or `chat_template_file`), with the tool-call and
    /// reasoning syntax detected from its text.
    Jinja { template: Box<ChatTemplate>, tools: ToolFormat, reasoning: Option<ReasoningTags> },
    /// One of llama.cpp's built-in templates: tools use the generic JSON format.
    Builtin(LlamaChatTemplate),
}

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
    format: ChatFormat,
    grammars: grammar::Grammars,
    /// The wall clock `strftime_now` reads in templates (a date is part of the prompt).
    wall: fn() -> std::time::SystemTime,
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
        let (format, tpl_name, tpl_source) = chat_format(&model, l, &arch)?;
        if let ChatFormat::Builtin(template) = &format {
            let probe = [LlamaChatMessage::new("user".into(), "hi".into()).map_err(EngineError::ProbeMessage)?];
            model.apply_chat_template(template, &probe, true).map_err(|error| EngineError::Template {
                path: l.path.clone(),
                template: tpl_name.clone(),
                error,
            })?;
        }
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
            format,
            grammars: grammar::Grammars::default(),
            wall: std::time::SystemTime::now,
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
                let body = json!({"model": self.name, "messages": [
                    {"role": "system", "content": text},
                    {"role": "user", "content": user},
                ]});
                let req = crate::protocol::validate(Endpoint::Chat, body.to_string().as_bytes()).ok()?;
                Some(self.prepare(&req, 0).ok()?.tokens)
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
            logit_bias: Vec::new(),
            top_logprobs: None,
            grammar: None,
            show_special: false,
            n: 1,
        }
    }

    /// An embeddings request on an embeddings deployment, with text inputs.
    fn check_embeddings(&self, req: &ValidRequest) -> Result<(), ApiError> {
        if (req.endpoint == Endpoint::Embeddings) != self.embeddings {
            let what = if self.embeddings { "serves embeddings only" } else { "does not serve embeddings" };
            return Err(ApiError::invalid_request(format!("The deployment '{}' {what}.", self.name), Some("model")));
        }
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
        Ok(())
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
            logit_bias: Vec::new(),
            top_logprobs: None,
            grammar: None,
            show_special: false,
            n: s.n.max(1),
        }
    }
}

impl LocalBackend {
    /// `/v1/embeddings`: one job per input, answered in order.
    fn embed(&self, br: &BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        let prepared = (|| {
            self.check_embeddings(&br.req).map_err(BackendError::Rejected)?;
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
            Ok(BackendReply::Full { body, usage: Some(u), raw: None })
        }
        .boxed()
    }
}

impl Backend for LocalBackend {
    fn count_tokens(&self, req: &ValidRequest) -> Option<Result<u64, ApiError>> {
        Some(self.prepare(req, 0).map(|p| p.tokens.len() as u64))
    }

    fn call(&self, br: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>> {
        if br.req.endpoint == Endpoint::Embeddings || self.embeddings {
            return self.embed(&br);
        }
        let prepared = (|| {
            if self.embeddings {
                return Err(BackendError::Rejected(ApiError::invalid_request(
                    format!("The deployment '{}' serves embeddings only.", self.name),
                    Some("model"),
                )));
            }
            let p = self.prepare(&br.req, br.seed).map_err(BackendError::Rejected)?;
            let (tx, rx) = mpsc::unbounded_channel();
            let job = Job {
                tokens: p.tokens,
                params: p.params,
                tx,
                enqueued: Instant::now(),
                pin_prefix: false,
                ticket: None,
                session: br.session.clone(),
            };
            self.queue.try_push(job, br.priority).map_err(|_| BackendError::Full)?;
            Ok((rx, p.reading))
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
            let (rx, reading) = prepared?;
            if stream {
                Ok(BackendReply::Stream(reply::chunks(head, reading, rx)))
            } else {
                reply::full(head, reading, rx).await
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
            v["kv_cells_used"] = self.queue.kv_cells().into();
            v["kv_cells"] = (u64::from(self.info.context) * u64::from(self.info.parallel)).into();
            v["sessions"] = self.queue.sessions().into();
            v["embeddings"] = self.embeddings.into();
            v
        })
    }
}

/// The chat format a deployment renders with: `chat_template_file`, else a configured
/// built-in name, else the GGUF's own Jinja template, else llama.cpp's built-in template for
/// the architecture. Also the name and source shown in `/v1/models`.
fn chat_format(
    model: &LlamaModel,
    l: &LocalConfig,
    arch: &str,
) -> Result<(ChatFormat, String, &'static str), EngineError> {
    let token = |t: llama_cpp_2::token::LlamaToken| {
        if t.0 < 0 {
            return String::new();
        }
        String::from_utf8_lossy(&model.vocab().token_to_piece(t, true, None)).into_owned()
    };
    let (bos, eos) = (token(model.vocab().bos()), token(model.vocab().eos()));
    let jinja = |src: &str, path: &std::path::Path| -> Result<ChatFormat, EngineError> {
        // The prompt is tokenized with BOS added, so the template's own leading BOS is cut
        // (as llama-server does).
        let template = ChatTemplate::new(src, &bos, &eos)
            .map_err(|error| EngineError::Jinja { path: path.to_owned(), error })?
            .with_added_tokens(true, false);
        Ok(ChatFormat::Jinja {
            tools: ToolFormat::detect(Some(src)),
            reasoning: crate::chat::reasoning::detect_reasoning(src),
            template: Box::new(template),
        })
    };
    if let Some(file) = &l.chat_template_file {
        let src =
            std::fs::read_to_string(file).map_err(|error| EngineError::TemplateFile { path: file.clone(), error })?;
        return Ok((jinja(&src, file)?, file.display().to_string(), "file"));
    }
    if let Some(name) = &l.chat_template {
        return Ok((
            ChatFormat::Builtin(LlamaChatTemplate::new(name).map_err(EngineError::TemplateName)?),
            name.clone(),
            "config",
        ));
    }
    match model.chat_template(None) {
        Ok(t) => {
            let src = t.to_str().map(str::to_owned).unwrap_or_default();
            let shown = src.chars().take(80).collect();
            match jinja(&src, &l.path) {
                Ok(f) => Ok((f, shown, "gguf")),
                Err(e) => {
                    tracing::warn!(model = %l.path.display(), error = %e, "the GGUF's chat template is not Jinja that minijinja renders; llama.cpp's own renderer applies it, and tools use the generic JSON format");
                    Ok((ChatFormat::Builtin(t), shown, "gguf"))
                }
            }
        }
        Err(_) => {
            let name = model_info::builtin_template_for(arch);
            tracing::info!(model = %l.path.display(), architecture = %arch, template = name, "the model has no chat template; using llama.cpp's built-in one for its architecture");
            Ok((
                ChatFormat::Builtin(LlamaChatTemplate::new(name).map_err(EngineError::TemplateName)?),
                name.to_owned(),
                "builtin",
            ))
        }
    }
}
