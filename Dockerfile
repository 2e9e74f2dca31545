# One image with both binaries; manifests/ runs `nodedns-agent` and `nodedns-authority` from it
# (their `command:`), and the pod specs set the user and capabilities.
#
#   docker build -t registry.example.com/nodedns:0.1.0 .
#   # then in your overlay: images: [{name: nodedns, newName: registry.example.com/nodedns, newTag: 0.1.0}]
#
# The build needs crates.io and nothing else (the protos compile in pure Rust, no protoc).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The commit label of the nodedns_build_info metric: docker build --build-arg NODEDNS_COMMIT=$(git rev-parse --short HEAD) .
ARG NODEDNS_COMMIT=unknown
ENV NODEDNS_COMMIT=${NODEDNS_COMMIT}
RUN cargo build --release --locked --bin nodedns-agent --bin nodedns-authority

FROM debian:bookworm-slim
COPY --from=build /src/target/release/nodedns-agent /src/target/release/nodedns-authority /usr/local/bin/
# Both binaries exit non-zero naming the field on a bad flag or config; no default command.
ENTRYPOINT []
CMD ["nodedns-agent", "--help"]
