# Tower image: the two compiled binaries on a distroless base, non-root.
# Build the binaries first (`deno task build`, with DENORT_BIN set when offline).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY bin/proxy /proxy
COPY bin/agent /agent
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/proxy"]
