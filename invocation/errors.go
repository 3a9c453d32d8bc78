package invocation

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Code is a stable, machine-readable error code. Codes are part of the API:
// they are never renamed, and each always comes with the same HTTP status.
type Code string

// Error codes and the HTTP status each travels with.
const (
	CodeNotFound            Code = "not_found"            // 404: no such route on the gateway
	CodeFunctionNotFound    Code = "function_not_found"   // 404: the function is not declared
	CodeCallNotFound        Code = "call_not_found"       // 404: no record of an asynchronous call of that id (never submitted, or expired)
	CodeBadRequest          Code = "bad_request"          // 400: the invocation itself is malformed
	CodeInvalidToken        Code = "invalid_token"        // 401: no bearer token, or one that does not verify
	CodeBadCredentials      Code = "invalid_credentials"  // 401: a login with a wrong username or password
	CodeForbidden           Code = "insufficient_scope"   // 403: the token lacks a permission the function requires
	CodeMethodNotAllowed    Code = "method_not_allowed"   // 405: the function does not answer this method
	CodeAsyncDisabled       Code = "async_disabled"       // 405: the function takes no asynchronous calls
	CodeConflict            Code = "conflict"             // 409: the action cannot be done in the state the thing is in
	CodePayloadTooLarge     Code = "payload_too_large"    // 413: request body over the limit
	CodeOverloaded          Code = "overloaded"           // 429: every runner reached was at its concurrency limit
	CodeTooManyAttempts     Code = "too_many_attempts"    // 429: too many failed logins; wait for Retry-After
	CodeQueueFull           Code = "queue_full"           // 429: the queue of asynchronous calls is at its limit; nothing was queued
	CodeFunctionPanic       Code = "function_panic"       // 500: the function panicked
	CodeFunctionFailed      Code = "function_failed"      // 500: the function's process (exec handler) exited with a status other than 0, or was killed
	CodeFunctionError       Code = "function_error"       // 4xx/5xx: in an asynchronous call's record, the function answered that error status
	CodeResponseTooLarge    Code = "response_too_large"   // 500: the answer does not fit in a NATS message
	CodeInternal            Code = "internal"             // 500: a fault in Shoal itself
	CodeNotImplemented      Code = "not_implemented"      // 501: the function does not offer this yet
	CodeBadGateway          Code = "bad_gateway"          // 502: a runner answered in a way the protocol does not allow
	CodeRunnerLost          Code = "runner_lost"          // 502: the runner running the invocation stopped before it answered
	CodeFunctionCrashed     Code = "function_crashed"     // 502: the function's process (http handler) exited, or broke its connection, before it answered
	CodeNoRunner            Code = "no_runner"            // 503: no runner serves the function
	CodeUnavailable         Code = "unavailable"          // 503: NATS unreachable, or the runner is shutting down
	CodeFunctionUnavailable Code = "function_unavailable" // 503: the function has no process ready (starting, restarting after a crash, shutting down) within the invocation's time
	CodeTimeout             Code = "timeout"              // 504: the function did not answer within its timeout
)

// Error is a failed invocation, in the one shape every Shoal error has on
// the wire: {"error": {"code": "...", "message": "..."}}.
type Error struct {
	// Status is the HTTP status code that goes with Code.
	Status  int    `json:"-"`
	Code    Code   `json:"code"`
	Message string `json:"message"`
	// RetryAfter, when positive, is sent as Retry-After in whole seconds
	// (rounded up); retryable codes send 1 second when it is unset.
	RetryAfter time.Duration `json:"-"`
	// Challenge, when set, is sent as WWW-Authenticate (RFC 6750).
	Challenge string `json:"-"`
}

// Errorf returns an Error with a formatted message.
func Errorf(status int, code Code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error formats the error as "code: message".
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// retryAfter is the Retry-After value of the answer, "" for none.
// Retryable codes invite the caller to try again shortly.
func (e *Error) retryAfter() string {
	if e.RetryAfter > 0 {
		return strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10)
	}
	switch e.Code {
	case CodeNoRunner, CodeOverloaded, CodeUnavailable, CodeFunctionUnavailable:
		return "1"
	}
	return ""
}

type errorBody struct {
	Error *Error `json:"error"`
}

// Body returns the error's JSON body, ending in a newline.
func (e *Error) Body() []byte {
	b, err := json.Marshal(errorBody{Error: e})
	if err != nil { // cannot happen: two strings
		panic(err)
	}
	return append(b, '\n')
}

// WriteHTTP writes the error as an HTTP response.
func (e *Error) WriteHTTP(w http.ResponseWriter) {
	if ew, ok := w.(ErrorWriter); ok {
		ew.WriteError(e)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if ra := e.retryAfter(); ra != "" {
		h.Set("Retry-After", ra)
	}
	if e.Challenge != "" {
		h.Set("WWW-Authenticate", e.Challenge)
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.Body()) // the client went away; nothing to do
}

// ErrorWriter is an http.ResponseWriter that carries a handler's failure
// apart from its answers: the runner's, so that a function run as a
// process whose process crashed (say) fails the invocation with the
// error's Shoal-Error headers, and is counted as failed, rather than
// answering as the function would. WriteHTTP uses it when w has it.
type ErrorWriter interface {
	WriteError(*Error)
}

// Header returns the NATS headers of an error reply: the NATS services
// framework's error headers plus Shoal-Error and Shoal-Status.
func (e *Error) Header() nats.Header {
	status := strconv.Itoa(e.Status)
	h := nats.Header{
		HeaderServiceErrorCode: {status},
		HeaderServiceError:     {e.Message},
		HeaderError:            {string(e.Code)},
		HeaderStatus:           {status},
		"Content-Type":         {"application/json"},
	}
	if ra := e.retryAfter(); ra != "" {
		h["Retry-After"] = []string{ra}
	}
	if e.Challenge != "" {
		h["Www-Authenticate"] = []string{e.Challenge}
	}
	return h
}

// Msg returns the error as a NATS reply to subject reply.
func (e *Error) Msg(reply string) *nats.Msg {
	return &nats.Msg{Subject: reply, Header: e.Header(), Data: e.Body()}
}

// ParseError decodes an error body; ok is false when body is not one.
func ParseError(status int, body []byte) (e *Error, ok bool) {
	var b errorBody
	if json.Unmarshal(body, &b) != nil || b.Error == nil || b.Error.Code == "" {
		return nil, false
	}
	b.Error.Status = status
	return b.Error, true
}
