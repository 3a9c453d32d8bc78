// Package shoal is the root of Shoal, a serverless-style function platform
// on NATS: an HTTP gateway publishes each invocation onto NATS and
// horizontally scaled runners answer it from queue groups.
//
// The packages below it provide the pieces: manifest (fn.yaml), invocation
// (the wire protocol between callers and runners), platform/gateway,
// platform/runner, platform/broker (the embedded NATS server) and functions
// (the built-in functions). The shoal command in cmd/shoal wires them.
package shoal

// Version is the version of this build of Shoal, reported by `shoal version`
// and advertised by runners to the NATS services framework (it must be SemVer).
const Version = "0.1.0-dev"
