package invocation

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// DefaultMethod is the method of an invocation that carries no Shoal-Method
// header, as a plain `nats req fn.NAME ...` does.
const DefaultMethod = http.MethodPost

// hopHeaders are meaningful only for one HTTP connection and never forwarded
// (RFC 9110, section 7.6.1). Content-Length is recomputed on each side.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
	"Content-Length":      true,
}

// forwardable reports whether an HTTP header crosses between a caller and
// a function. connection lists the extra hop-by-hop names a Connection
// header named.
func forwardable(name string, connection []string) bool {
	if hopHeaders[name] || Reserved(name) {
		return false
	}
	for _, c := range connection {
		for f := range strings.SplitSeq(c, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(f)) == name {
				return false
			}
		}
	}
	return true
}

// NewRequestMsg builds the NATS message that invokes a function on behalf
// of HTTP request r. subject is the function's subject, path the part of
// the URL path below /function/NAME in its escaped form ("" or "/..."),
// and body the request body already read. The message shares r's header
// values; it must be sent before r is modified.
func NewRequestMsg(subject string, r *http.Request, path string, body []byte) *nats.Msg {
	connection := r.Header["Connection"]
	h := make(nats.Header, len(r.Header)+6)
	for k, v := range r.Header {
		if forwardable(k, connection) {
			h[k] = v
		}
	}
	h[HeaderMethod] = methodValue(r.Method)
	if path != "" && path != "/" {
		h[HeaderPath] = []string{path}
	}
	if r.URL.RawQuery != "" {
		h[HeaderQuery] = []string{r.URL.RawQuery}
	}
	// Tell the function who called, as a reverse proxy does.
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		h["X-Forwarded-For"] = []string{host}
	}
	if r.Host != "" {
		h["X-Forwarded-Host"] = []string{r.Host}
	}
	if r.TLS != nil {
		h["X-Forwarded-Proto"] = protoHTTPS
	} else {
		h["X-Forwarded-Proto"] = protoHTTP
	}
	return &nats.Msg{Subject: subject, Header: h, Data: body}
}

// Header values shared by every message, to spare an allocation per
// invocation; messages are encoded, never modified, once built.
var (
	protoHTTP    = []string{"http"}
	protoHTTPS   = []string{"https"}
	methodValues = map[string][]string{
		"GET": {"GET"}, "HEAD": {"HEAD"}, "POST": {"POST"}, "PUT": {"PUT"},
		"PATCH": {"PATCH"}, "DELETE": {"DELETE"}, "OPTIONS": {"OPTIONS"},
	}
)

func methodValue(m string) []string {
	if v, ok := methodValues[m]; ok {
		return v
	}
	return []string{m}
}

// NewHTTPRequest rebuilds the HTTP request an invocation carries, for a
// function written as an http.Handler. It takes ownership of header: the
// protocol's own headers are removed from it and the rest become the
// request's headers. The URL holds only the path below /function/NAME and
// the query. A malformed invocation yields a [CodeBadRequest] *Error.
func NewHTTPRequest(ctx context.Context, header nats.Header, body []byte) (*http.Request, error) {
	method, path, query := DefaultMethod, "/", ""
	if v := header[HeaderMethod]; len(v) > 0 {
		method = v[0]
	}
	if v := header[HeaderPath]; len(v) > 0 && v[0] != "" {
		path = v[0]
	}
	if v := header[HeaderQuery]; len(v) > 0 {
		query = v[0]
	}
	if path[0] != '/' {
		return nil, Errorf(http.StatusBadRequest, CodeBadRequest, "%s %q must start with /", HeaderPath, path)
	}
	unescaped, err := url.PathUnescape(path)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeBadRequest, "%s %q is not a valid escaped path: %v", HeaderPath, path, err)
	}
	var rd *bytes.Reader
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	// A nil *bytes.Reader must not become a non-nil io.Reader.
	req, err := http.NewRequestWithContext(ctx, method, "/", nilSafe(rd))
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeBadRequest, "%s %q is not a valid HTTP method", HeaderMethod, method)
	}
	req.URL.Path = unescaped
	if unescaped != path {
		req.URL.RawPath = path
	}
	req.URL.RawQuery = query
	req.RequestURI = req.URL.RequestURI()
	req.Header = functionHeader(header)
	if v := req.Header["X-Forwarded-Host"]; len(v) > 0 {
		req.Host = v[0]
	}
	return req, nil
}

func nilSafe(r *bytes.Reader) io.Reader {
	if r == nil {
		return http.NoBody
	}
	return r
}

// functionHeader turns NATS headers into the headers a function sees:
// reserved names removed, names in canonical HTTP form. It edits h in place.
func functionHeader(h nats.Header) http.Header {
	for k, v := range h {
		if Reserved(k) || hopHeaders[k] {
			delete(h, k)
			continue
		}
		if c := textproto.CanonicalMIMEHeaderKey(k); c != k {
			delete(h, k)
			h[c] = append(h[c], v...)
		}
	}
	if h == nil {
		return http.Header{}
	}
	return http.Header(h)
}

// NewResponseMsg builds the reply that carries a function's answer. It
// takes ownership of header: reserved names and values that cannot travel
// in a header (with CR or LF) are dropped, and Shoal-Status is added.
func NewResponseMsg(reply string, status int, header http.Header, body []byte) *nats.Msg {
	h := nats.Header(header)
	if h == nil {
		h = make(nats.Header, 1)
	}
	for k, v := range h {
		if Reserved(k) || hopHeaders[k] || !validValues(v) {
			delete(h, k)
		}
	}
	h[HeaderStatus] = []string{strconv.Itoa(status)}
	return &nats.Msg{Subject: reply, Header: h, Data: body}
}

func validValues(vs []string) bool {
	for _, v := range vs {
		if strings.ContainsAny(v, "\r\n") {
			return false
		}
	}
	return true
}

// Status returns the HTTP status of a reply: the error code of an error
// reply, else Shoal-Status, else 200 for a responder that does not speak
// this protocol. A reply whose status cannot be read yields a
// [CodeBadGateway] *Error.
func Status(h nats.Header) (int, error) {
	if v := h.Get(HeaderServiceErrorCode); v != "" {
		code, err := strconv.Atoi(v)
		if err != nil || code < 400 || code > 599 {
			// Another NATS service's error code that is not an HTTP
			// status: still an error.
			return http.StatusInternalServerError, nil
		}
		return code, nil
	}
	v := h.Get(HeaderStatus)
	if v == "" {
		return http.StatusOK, nil
	}
	code, err := strconv.Atoi(v)
	if err != nil || code < 200 || code > 599 {
		return 0, Errorf(http.StatusBadGateway, CodeBadGateway, "the runner sent an invalid %s %q", HeaderStatus, v)
	}
	return code, nil
}

// CopyResponseHeader copies a reply's headers that belong to the function's
// answer into an HTTP response header.
func CopyResponseHeader(dst http.Header, src nats.Header) {
	for k, v := range src {
		if Reserved(k) || hopHeaders[k] || !validValues(v) {
			continue
		}
		dst[textproto.CanonicalMIMEHeaderKey(k)] = v
	}
}
