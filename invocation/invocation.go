// Package invocation defines how a function call travels over NATS: the
// subject scheme, the header names, the error codes, and the conversions
// between an HTTP request or response and a NATS message.
//
// It is the whole contract between callers (the gateway, `shoal invoke`,
// any NATS client) and runners; a third party can implement either side
// from docs/nats-api.md, which documents the same constants.
//
// An invocation is one NATS request on the subject fn.NAME. Runners of
// the function answer from the queue group shoal-runners, so each request
// reaches exactly one runner. The request data is the HTTP body; its
// headers are the HTTP request headers plus Shoal-Method, Shoal-Path and
// Shoal-Query. The reply data is the response body; its headers are the
// function's response headers plus Shoal-Status. A failure is a reply in
// the NATS services framework's error form (Nats-Service-Error-Code holds
// the HTTP status, Nats-Service-Error the message) with Shoal-Error holding
// a stable [Code] and a JSON [Error] body.
//
// A caller that wants to know which runner took an invocation (to fail it
// at once if that runner dies) sets [HeaderAck] to [AckRequested]; the
// runner that admits it then sends an ack message ([NewAckMsg], read with
// [ReadAck]) to the reply subject before the answer, if the invocation is
// still running after a short delay (a Shoal runner waits 10 ms), so
// that quick invocations cost no ack. Such a caller needs its own reply
// subscription, as a request helper that keeps only the first message
// would take the ack for the answer.
package invocation

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Subject scheme.
const (
	// SubjectPrefix starts every function's subject: fn.NAME.
	SubjectPrefix = "fn."
	// QueueGroup is the queue group every runner endpoint joins, so that
	// each invocation reaches one runner.
	QueueGroup = "shoal-runners"
	// ServiceName is the NATS services framework name runners register
	// under (`nats micro info shoal-runner`).
	ServiceName = "shoal-runner"
)

// Request headers, set by the caller.
const (
	// HeaderMethod carries the HTTP method; absent means POST.
	HeaderMethod = "Shoal-Method"
	// HeaderPath carries the path below /function/NAME, escaped as in a
	// URL and starting with "/"; absent means "/".
	HeaderPath = "Shoal-Path"
	// HeaderQuery carries the raw query string, without "?".
	HeaderQuery = "Shoal-Query"
	// HeaderAck, set to [AckRequested] on a request, asks the runner that
	// admits the invocation for an ack message before the answer, if the
	// invocation runs for a while. On the ack message it carries the
	// runner's id.
	HeaderAck = "Shoal-Ack"
)

// AckRequested is the value of [HeaderAck] on a request that asks for an
// ack. Other values are ignored, so that the header can grow meanings.
const AckRequested = "1"

// Reply headers, set by the runner.
const (
	// HeaderStatus carries the HTTP status code of a function's answer.
	HeaderStatus = "Shoal-Status"
	// HeaderError carries a stable [Code] when the invocation failed.
	HeaderError = "Shoal-Error"
	// HeaderServiceError and HeaderServiceErrorCode are the NATS services
	// framework's error headers; Shoal puts the HTTP status in the code.
	HeaderServiceError     = micro.ErrorHeader
	HeaderServiceErrorCode = micro.ErrorCodeHeader
)

// WantsAck reports whether a request asks for an ack: [HeaderAck] is
// [AckRequested], the name in any case.
func WantsAck(h nats.Header) bool {
	return headerValue(h, HeaderAck) == AckRequested
}

// NewAckMsg builds the ack message a runner sends to subject reply when it
// admits an invocation that asked for one: no data, [HeaderAck] holding
// runner, the runner's stable id (runner.Runner.ID, also its services
// metadata RunnerMetadata), and no
// [HeaderStatus]. It must reach reply before the answer does: publish it
// first, on the connection the answer will use.
func NewAckMsg(reply, runner string) *nats.Msg {
	return &nats.Msg{Subject: reply, Header: nats.Header{HeaderAck: {runner}}}
}

// ReadAck reports whether msg, received on a request's reply subject, is
// an ack rather than the answer, and if so which runner sent it. An ack
// has no data, a non-empty [HeaderAck] and neither [HeaderStatus] nor
// [HeaderServiceErrorCode].
func ReadAck(msg *nats.Msg) (runner string, ok bool) {
	if len(msg.Data) > 0 || len(msg.Header) == 0 {
		return "", false
	}
	runner = headerValue(msg.Header, HeaderAck)
	if runner == "" || headerValue(msg.Header, HeaderStatus) != "" || headerValue(msg.Header, HeaderServiceErrorCode) != "" {
		return "", false
	}
	return runner, true
}

// headerValue is the first value of the header name, whose canonical form
// is canonical, in any case: NATS keeps names as the sender wrote them.
// The exact name is tried first; names of another length are skipped.
func headerValue(h nats.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(k) == len(canonical) && len(v) > 0 && asciiEqualFold(k, canonical) {
			return v[0]
		}
	}
	return ""
}

// Subject returns the NATS subject that invokes function name.
func Subject(name string) string { return SubjectPrefix + name }

// reservedPrefixes mark headers that belong to the protocol or to NATS and
// are never passed between a function and its caller.
var reservedPrefixes = [...]string{"Shoal-", "Nats-"}

// Reserved reports whether a header name belongs to the protocol (Shoal-*)
// or to NATS (Nats-*); such headers are not forwarded to or from functions.
// The match ignores case, as NATS header names keep the caller's case.
func Reserved(name string) bool {
	for _, p := range reservedPrefixes {
		if len(name) >= len(p) && asciiEqualFold(name[:len(p)], p) {
			return true
		}
	}
	return false
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}
