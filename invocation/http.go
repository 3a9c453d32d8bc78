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

// crosses reports whether a header, by its canonical name, may pass
// between a caller and a function. connection holds the Connection
// header's values, which name further hop-by-hop headers.
func crosses(name string, connection []string) bool {
	if hopHeaders[name] || Reserved(name) {
		return false
	}
	for _, c := range connection {
		for f := range strings.SplitSeq(c, ",") {
			if textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(f)) == name {
				return false
			}
		}
	}
	return true
}

// canonicalize puts h's names in canonical HTTP form in place, merging the
// values of names that differ only in case. NATS keeps header names as the
// sender wrote them; HTTP compares them without case.
func canonicalize(h map[string][]string) {
	for k, v := range h {
		if c := textproto.CanonicalMIMEHeaderKey(k); c != k {
			delete(h, k)
			h[c] = append(h[c], v...)
		}
	}
}

// scrub removes from h, whose names are canonical, what must not cross
// between a caller and a function: hop-by-hop and reserved headers, and
// values that cannot travel in a header (with CR or LF).
func scrub(h map[string][]string) {
	connection := h["Connection"]
	for k, v := range h {
		if !crosses(k, connection) || !validValues(v) {
			delete(h, k)
		}
	}
}

func validValues(vs []string) bool {
	for _, v := range vs {
		// Two IndexByte scans (vectorized) cost less than one ContainsAny.
		if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
			return false
		}
	}
	return true
}

// Header values shared by every message, to spare an allocation per
// invocation. Messages are encoded, never modified, once built: nothing
// may write into these slices.
var (
	protoHTTP    = []string{"http"}
	protoHTTPS   = []string{"https"}
	methodValues = map[string][]string{
		"GET": {"GET"}, "HEAD": {"HEAD"}, "POST": {"POST"}, "PUT": {"PUT"},
		"PATCH": {"PATCH"}, "DELETE": {"DELETE"}, "OPTIONS": {"OPTIONS"},
	}
	statusValues [600][]string
)

func init() {
	for code := 100; code < len(statusValues); code++ {
		statusValues[code] = []string{strconv.Itoa(code)}
	}
}

func methodValue(m string) []string {
	if v, ok := methodValues[m]; ok {
		return v
	}
	return []string{m}
}

func statusValue(code int) []string {
	if code >= 100 && code < len(statusValues) {
		return statusValues[code]
	}
	return []string{strconv.Itoa(code)}
}

// NewRequestMsg builds the NATS message that invokes a function on behalf
// of HTTP request r. subject is the function's subject, path the part of
// the URL path below /function/NAME in its escaped form ("" or "/..."),
// and body the request body already read. The message shares r's header
// values; it must be sent before r is modified.
func NewRequestMsg(subject string, r *http.Request, path string, body []byte) *nats.Msg {
	connection := r.Header["Connection"]
	// Room for the six headers below, and the four the gateway adds
	// (X-Request-Id, traceparent, Shoal-Ack, Shoal-Stream): a map that
	// grows costs allocations on the hot path.
	h := make(nats.Header, len(r.Header)+10)
	for k, v := range r.Header {
		// net/http has put the names in canonical form already.
		if crosses(k, connection) {
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
	// Tell the function who called, as a reverse proxy does: the client's
	// address is appended to X-Forwarded-For; X-Forwarded-Host and -Proto
	// describe this request only, whatever the client sent.
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		h["X-Forwarded-For"] = []string{host}
	}
	if r.Host != "" {
		h["X-Forwarded-Host"] = []string{r.Host}
	} else {
		delete(h, "X-Forwarded-Host")
	}
	if r.TLS != nil {
		h["X-Forwarded-Proto"] = protoHTTPS
	} else {
		h["X-Forwarded-Proto"] = protoHTTP
	}
	return &nats.Msg{Subject: subject, Header: h, Data: body}
}

// NewHTTPRequest rebuilds the HTTP request an invocation carries, for a
// function written as an http.Handler. It takes ownership of header: its
// names are put in canonical form, the protocol's own headers are read
// and removed, and the rest become the request's headers. The URL holds
// only the path below /function/NAME and the query. A malformed invocation
// yields a [CodeBadRequest] *Error.
func NewHTTPRequest(ctx context.Context, header nats.Header, body []byte) (*http.Request, error) {
	if header == nil {
		header = nats.Header{}
	}
	canonicalize(header)
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
	var rd io.Reader = http.NoBody
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "/", rd)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeBadRequest, "%s %q is not a valid HTTP method", HeaderMethod, method)
	}
	req.URL.Path = unescaped
	if unescaped != path {
		req.URL.RawPath = path
	}
	req.URL.RawQuery = query
	req.RequestURI = req.URL.RequestURI()
	scrub(header)
	req.Header = http.Header(header)
	if v := req.Header["X-Forwarded-Host"]; len(v) > 0 {
		req.Host = v[0]
	}
	return req, nil
}

// NewResponseMsg builds the reply that carries a function's answer. It
// takes ownership of header: names are put in canonical form, hop-by-hop
// and reserved headers and values with CR or LF are dropped, and
// Shoal-Status is added.
func NewResponseMsg(reply string, status int, header http.Header, body []byte) *nats.Msg {
	h := nats.Header(header)
	if h == nil {
		h = make(nats.Header, 1)
	}
	canonicalize(h)
	scrub(h)
	h[HeaderStatus] = statusValue(status)
	return &nats.Msg{Subject: reply, Header: h, Data: body}
}

// ReadReply reads a reply: it returns the HTTP status and adds the headers
// that belong to the function's answer to dst. The status is the error
// code of an error reply, else Shoal-Status, else 200 for a responder that
// does not speak this protocol. h's names are put in canonical form, in
// place, so a responder's spelling does not matter. A reply whose status
// cannot be read yields a [CodeBadGateway] *Error and adds nothing to dst.
func ReadReply(dst http.Header, h nats.Header) (int, error) {
	canonicalize(h)
	status, err := replyStatus(h)
	if err != nil {
		return 0, err
	}
	connection := h["Connection"]
	for k, v := range h {
		if crosses(k, connection) && validValues(v) {
			dst[k] = append(dst[k], v...)
		}
	}
	return status, nil
}

// replyStatus reads the status of a reply whose names are canonical.
func replyStatus(h nats.Header) (int, error) {
	if v := h[HeaderServiceErrorCode]; len(v) > 0 && v[0] != "" {
		code, err := strconv.Atoi(v[0])
		if err != nil || code < 400 || code > 599 {
			// Another NATS service's error code that is not an HTTP
			// status: still an error.
			return http.StatusInternalServerError, nil
		}
		return code, nil
	}
	v := h[HeaderStatus]
	if len(v) == 0 || v[0] == "" {
		return http.StatusOK, nil
	}
	code, err := strconv.Atoi(v[0])
	if err != nil || code < 200 || code > 599 {
		return 0, Errorf(http.StatusBadGateway, CodeBadGateway, "the runner sent an invalid %s %q", HeaderStatus, v[0])
	}
	return code, nil
}
