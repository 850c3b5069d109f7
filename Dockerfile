# tollgate with its embedded engine (CPU, all x86-64 variants picked at run time).
#   docker build -t tollgate .
#   docker run -p 8080:8080 -v $PWD/models:/models tollgate serve --model /models/model.gguf --listen 0.0.0.0:8080
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && mkdir -p /out/ggml-backends \
 && cp target/release/tollgate /out/ \
 && cp "$(dirname "$(find target/release/build -path '*llama-cpp-sys-2*/out/lib/libllama.so' | head -1)")"/*.so* /out/ \
 && cp "$(find target/release/build -type d -path '*tollgate-*/out/ggml-backends' | head -1)"/*.so /out/ggml-backends/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /opt/tollgate/
COPY routes /etc/tollgate/routes
COPY prompts /etc/tollgate/prompts
WORKDIR /etc/tollgate
EXPOSE 8080
ENTRYPOINT ["/opt/tollgate/tollgate"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
