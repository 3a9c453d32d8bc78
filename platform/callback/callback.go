// Package callback delivers the result of an asynchronous call to the URL
// its caller named in the X-Callback-Url header: one POST of the call's
// result record, as JSON. Deliver makes one attempt and says whether a
// later one may succeed; retrying and scheduling are the job of the
// JetStream consumer that calls it.
//
// # Policy
//
// A callback URL comes from an API user, so Shoal must not become a way to
// reach addresses only Shoal can reach (server-side request forgery). A
// [Policy] allows a connection to an address that is public unicast. These
// are not public: loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0/8, ::),
// private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7),
// link-local (169.254.0.0/16, which holds cloud metadata services at
// 169.254.169.254, and fe80::/10), shared address space (100.64.0.0/10),
// multicast, reserved (240.0.0.0/4, with broadcast 255.255.255.255),
// benchmarking (198.18.0.0/15), IETF protocol assignments (192.0.0.0/24),
// documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
// 2001:db8::/32) and a few more special-purpose IPv6 ranges. IPv6
// addresses that embed an IPv4 address are judged by it: IPv4-mapped
// (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
//
// An operator widens the policy with allow-list entries (--callback-allow,
// see [ParsePolicy]):
//
//   - an address inside an allowed CIDR prefix, or equal to an allowed
//     address, is allowed even if it is not public;
//   - a URL whose host name matches an allowed name may connect to any
//     address the name resolves to.
//
// Addresses are checked when a connection is made, on the address being
// dialled, so a host name that resolves to an internal address is refused
// however it got there (including DNS rebinding): http://localhost/ is
// refused by default although "localhost" is a name. [Policy.CheckURL]
// refuses literal addresses early, when the call is submitted.
//
// # Outcomes
//
// A 2xx answer is a delivery. 408, 425, 429 and 5xx answers, timeouts and
// connection failures (refused, reset, no such host) may pass on a later
// attempt: [Retryable] is true. Refused addresses, redirects (never
// followed) and other 4xx answers will not: [Retryable] is false.
package callback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// UserAgent is the User-Agent of every callback request.
const UserAgent = "shoal-callback"

// maxDrain bounds what is read of a callback's answer, body or headers:
// only the status matters, and a hostile endpoint may answer forever.
const maxDrain = 64 << 10

// Error is a failed delivery attempt.
type Error struct {
	// StatusCode is the HTTP status the callback answered, 0 when it did not.
	StatusCode int
	// Retry tells whether a later attempt may succeed.
	Retry bool
	err   error
}

// Error describes the failure without the URL, whose query may hold secrets.
func (e *Error) Error() string {
	if e.err == nil { // an Error built by a caller, e.g. in a test
		return "callback not delivered"
	}
	return e.err.Error()
}

// Unwrap returns the cause, for errors.Is (e.g. [ErrRefused]).
func (e *Error) Unwrap() error { return e.err }

// Retryable reports whether err, from [Deliver], is a failure a later
// attempt may overcome.
func Retryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retry
}

// Deliver POSTs body, as application/json, with the extra header, to
// rawURL once, using client (from [Policy.Client], which enforces the
// policy), and returns nil when the callback answered 2xx, or an [*Error].
// At most 64 KiB of the answer is read; the rest is discarded unread.
func Deliver(ctx context.Context, client *http.Client, rawURL string, header http.Header, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err == nil && req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		err = errors.New("the scheme must be http or https")
	}
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // ue repeats the URL, query and all
		}
		return &Error{err: fmt.Errorf("callback URL not usable: %w", err)}
	}
	if header != nil {
		req.Header = header.Clone()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)

	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &Error{Retry: !errors.Is(err, ErrRefused), err: fmt.Errorf("callback not delivered: %w", err)}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain)) // lets a short answer's connection be reused

	code := resp.StatusCode
	msg := strings.TrimSpace(fmt.Sprintf("callback answered %d %s", code, http.StatusText(code)))
	if code >= 200 && code < 300 {
		return nil
	}
	if code >= 300 && code < 400 && resp.Header.Get("Location") != "" {
		msg += "; redirects are not followed"
	}
	retry := code == http.StatusRequestTimeout || code == http.StatusTooEarly ||
		code == http.StatusTooManyRequests || code >= 500
	return &Error{StatusCode: code, Retry: retry, err: errors.New(msg)}
}

// Redact returns rawURL fit for logs: scheme://host/path, without the
// user name, password, query or fragment, which may hold secrets.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}
