//! Why a local deployment could not start. (A request's errors are the backend's
//! [`BackendError`](crate::backend::BackendError).)

use std::path::PathBuf;

use llama_cpp_2::{ApplyChatTemplateError, LlamaContextLoadError, LlamaModelLoadError, NewLlamaChatMessageError};

use super::model_info::ModelFileError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "{deployment}: deterministic = true needs ggml's tiled matmul off from the start of the process \
         (GGML_CPU_TILED_MM=0); restart tollgate with this configuration"
    )]
    NeedsTiledMatmulOff { deployment: String },
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error("{}: {error}", .path.display())]
    Hash { path: PathBuf, error: std::io::Error },
    #[error("{}: llama.cpp could not load the model: {error}", .path.display())]
    Load { path: PathBuf, error: LlamaModelLoadError },
    #[error("the model loader panicked: {0}")]
    LoaderPanicked(tokio::task::JoinError),
    /// A chat template name with a NUL byte in it.
    #[error("{0}")]
    TemplateName(std::ffi::NulError),
    #[error("{0}")]
    ProbeMessage(NewLlamaChatMessageError),
    #[error("{}: the chat template '{template}' cannot be applied: {error}", .path.display())]
    Template { path: PathBuf, template: String, error: ApplyChatTemplateError },
    #[error("{}: cannot read the chat template file: {error}", .path.display())]
    TemplateFile { path: PathBuf, error: std::io::Error },
    #[error("{}: the Jinja chat template does not compile: {error}", .path.display())]
    Jinja { path: PathBuf, error: crate::chat::template::TemplateError },
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    #[error("the engine thread died while starting")]
    ThreadDied,
    #[error(
        "cannot create a llama.cpp context of {n_ctx} tokens for {parallel} sequences: {error} (too little memory?)"
    )]
    Context { n_ctx: u32, parallel: u32, error: LlamaContextLoadError },
    #[error("cannot create an embedding context: {0}")]
    EmbeddingContext(LlamaContextLoadError),
}

/// Why llama.cpp's backend could not be set up. Cloned: the outcome is kept for the
/// process and handed to every deployment that asks.
#[derive(Clone, Debug, thiserror::Error)]
pub enum InitError {
    #[error("TOLLGATE_CPU_VARIANT={variant}: no such CPU variant in {} (there are: {})", .dir.display(), .known.join(", "))]
    UnknownVariant { variant: String, dir: PathBuf, known: Vec<String> },
    /// The variant's library path has a NUL byte in it.
    #[error("{0}")]
    VariantPath(std::ffi::NulError),
    #[error("TOLLGATE_CPU_VARIANT={variant}: this CPU cannot run that variant ({})", .file.display())]
    VariantUnsupported { variant: String, file: PathBuf },
    /// llama.cpp's own error, as its text (llama.cpp's error type cannot be cloned).
    #[error("cannot initialise llama.cpp: {0}")]
    Llama(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_to_change() {
        let e = InitError::UnknownVariant {
            variant: "zen9".into(),
            dir: "/opt/ggml".into(),
            known: vec!["haswell".into(), "skylakex".into()],
        };
        assert_eq!(
            e.to_string(),
            "TOLLGATE_CPU_VARIANT=zen9: no such CPU variant in /opt/ggml (there are: haswell, skylakex)"
        );
        let e = EngineError::from(InitError::Llama("no backend".into()));
        assert_eq!(e.to_string(), "cannot initialise llama.cpp: no backend");
        let e = EngineError::NeedsTiledMatmulOff { deployment: "local".into() };
        assert!(e.to_string().starts_with("local: deterministic = true needs ggml's tiled matmul off"), "{e}");
        let e = EngineError::Context { n_ctx: 4096, parallel: 2, error: LlamaContextLoadError::NullReturn };
        assert_eq!(
            e.to_string(),
            "cannot create a llama.cpp context of 4096 tokens for 2 sequences: null reference from llama.cpp (too little memory?)"
        );
    }
}
