//! An HTTPS front for the scripted upstream ([`super::fake`]): rustls with a test CA made
//! once per test binary, offering HTTP/2 or HTTP/1.1 by ALPN, served by hyper, each request
//! passed to the fake over HTTP/1.1 and its answer streamed back as the fake wrote it (an
//! upstream cut becomes a broken stream, a gateway that goes away closes the fake's
//! connection). So the same scripts test the gateway's client over TLS and HTTP/2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The header the front adds to each request it passes on: the protocol TLS negotiated.
pub const ALPN_HEADER: &str = "x-test-front-alpn";

/// What the front offers in its TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

struct Ca {
    /// The CA certificate, PEM, for a deployment's `ca_file`.
    file: PathBuf,
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    h1_server: Arc<rustls::ServerConfig>,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "tollgate test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca_cert.pem()).unwrap();
        let config = |alpn: &[&[u8]]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
            let mut c = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
                .unwrap();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Ca { file, _dir: dir, server: config(&[b"h2", b"http/1.1"]), h1_server: config(&[b"http/1.1"]) }
    })
}

/// The test CA's certificate file (what a deployment's `ca_file` names).
pub fn ca_file() -> PathBuf {
    ca().file.clone()
}

/// Starts an HTTPS front for the plain HTTP/1.1 upstream at `to`; its address.
pub async fn front(to: SocketAddr, alpn: Alpn) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = match alpn {
        Alpn::H2 => ca().server.clone(),
        Alpn::Http11 => ca().h1_server.clone(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(http);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, client) = (acceptor.clone(), client.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
                        parts.uri = format!("http://{to}{path}").parse().unwrap();
                        parts.version = hyper::Version::HTTP_11;
                        parts.headers.remove(hyper::header::HOST);
                        // What the gateway's client negotiated, for the fake's captures.
                        let alpn = if h2 { "h2" } else { "http/1.1" };
                        parts.headers.insert(ALPN_HEADER, hyper::header::HeaderValue::from_static(alpn));
                        let resp = client.request(hyper::Request::from_parts(parts, Full::new(body))).await;
                        resp.map(|r| r.map(|b| b.boxed()))
                    }
                });
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let b = if h2 { b.http2_only() } else { b.http1_only() };
                let _ = b.serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}
