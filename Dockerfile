# ditto: a static binary on a distroless base, running as a non-root user.
#
#   docker build -t ditto --build-arg VERSION=v1.2.3 .      # the runtime image (last stage)
#   docker build -t esdb-emulator --target emulator .       # the test server, for demos and CI
#
# cmd/ditto/dockerfile_test.go runs the build commands below as they stand
# (CGO off, same flags) and checks the stages and paths that the compose
# files and deploy/ name.

FROM golang:1.26 AS source
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN go mod download
COPY . .

FROM source AS build
# Stamped into the binary: `ditto version` and the ditto_build_info metric.
# Left empty, ditto reports the Go build info's version instead.
ARG VERSION=
RUN go build -trimpath -ldflags="-s -w -X github.com/ditto-replicator/ditto/internal/buildinfo.version=${VERSION}" -o /out/ditto ./cmd/ditto

# The test server, built only for the emulator target.
FROM source AS build-emulator
RUN go build -trimpath -ldflags="-s -w" -o /out/esdb-emulator ./cmd/esdb-emulator

FROM gcr.io/distroless/static-debian12:nonroot AS emulator
COPY --from=build-emulator /out/esdb-emulator /usr/local/bin/esdb-emulator
# 65532 is distroless's nonroot user; numeric, so that Kubernetes can
# check runAsNonRoot.
USER 65532:65532
EXPOSE 2113
ENTRYPOINT ["/usr/local/bin/esdb-emulator"]
CMD ["--addr", "0.0.0.0:2113", "--insecure", "--allow-remote"]

# The runtime image: ditto alone. Last, so it is the default target.
FROM gcr.io/distroless/static-debian12:nonroot AS ditto
COPY --from=build /out/ditto /usr/local/bin/ditto
USER 65532:65532
# /metrics, /health/live and /health/ready (DITTO_METRICS_ADDRESS, :5000).
EXPOSE 5000
# No shell in the image: ditto asks its own /health/ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/ditto", "health"]
ENTRYPOINT ["/usr/local/bin/ditto"]
