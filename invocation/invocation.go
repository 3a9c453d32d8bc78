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
package invocation

import (
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
)

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
