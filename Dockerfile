# ditto: a static binary on a distroless base, running as a non-root user.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ditto ./cmd/ditto \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/esdb-emulator ./cmd/esdb-emulator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ditto /usr/local/bin/ditto
COPY --from=build /out/esdb-emulator /usr/local/bin/esdb-emulator
USER nonroot:nonroot
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/ditto"]
