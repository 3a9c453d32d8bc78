package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one HTTP request to repeat: GET Path on Addr, with Header,
// expecting a 2xx answer with Body.
type Target struct {
	// Addr is the server's host:port.
	Addr string
	// Path is the request target, e.g. /function/ping.
	Path string
	// Header holds extra request headers, such as Authorization.
	Header http.Header
	// Body is the expected answer body; nil accepts any.
	Body []byte
}

// request formats the request once, for every send.
func (t Target) request() []byte {
	var b bytes.Buffer
	path := t.Path
	if path == "" {
		path = "/"
	}
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, t.Addr)
	keys := make([]string, 0, len(t.Header))
	for k := range t.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range t.Header[k] {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// Limits of what HTTPClient reads.
const (
	// maxBody is the largest body read and checked; a longer one is
	// skipped (and is a Body error when one is expected).
	maxBody = 1 << 20
	// maxHeaderLines bounds the header lines of one answer.
	maxHeaderLines = 128
	// readBuffer is the size of the connection's read buffer: one line
	// of the answer must fit in it.
	readBuffer = 8 << 10
	// dialTimeout bounds a connection's dial.
	dialTimeout = 5 * time.Second
)

// HTTPClient sends one Target's request over one HTTP/1.1 keep-alive
// connection, one at a time, dialled on first use and again after the
// connection breaks or the server asks to close it. It is a Requester:
// Do and Close may be called from different goroutines, Do from one at
// a time.
type HTTPClient struct {
	addr string
	req  []byte
	want []byte

	mu     sync.Mutex // guards conn against Close
	conn   net.Conn   // written by Do only, under mu
	closed atomic.Bool

	br   *bufio.Reader
	body []byte
	// reused reports whether conn has answered a request already.
	reused bool
}

// NewHTTPClient returns a client for t; it connects on the first Do.
func NewHTTPClient(t Target) *HTTPClient {
	return &HTTPClient{addr: t.Addr, req: t.request(), want: t.Body, body: make([]byte, 0, max(len(t.Body), 512))}
}

// Do sends the request and reads the answer. A status other than 2xx is
// a Status error and a body other than the Target's a Body error (the
// connection stays usable); anything else that goes wrong is a Transport
// error and closes the connection.
func (c *HTTPClient) Do() error {
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return err
		}
	}
	if _, err := c.conn.Write(c.req); err != nil {
		c.drop()
		return &Error{Kind: Transport, Err: fmt.Errorf("write: %w", err)}
	}
	status, keep, err := c.readAnswer()
	if err != nil {
		c.drop()
		return &Error{Kind: Transport, Err: err}
	}
	c.reused = true
	if !keep {
		c.drop()
	}
	if status < 200 || status > 299 {
		return &Error{Kind: Status, Err: fmt.Errorf("status %d", status)}
	}
	if c.want != nil && !bytes.Equal(c.body, c.want) {
		return &Error{Kind: Body, Err: fmt.Errorf("body %q, want %q", truncate(c.body), truncate(c.want))}
	}
	return nil
}

// Close closes the connection; a Do in progress returns, and later ones
// fail.
func (c *HTTPClient) Close() error {
	c.closed.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// errClosed is a Do after Close.
var errClosed = errors.New("client closed")

func (c *HTTPClient) dial() error {
	if c.closed.Load() {
		return &Error{Kind: Transport, Err: errClosed}
	}
	conn, err := net.DialTimeout("tcp", c.addr, dialTimeout)
	if err != nil {
		return &Error{Kind: Transport, Err: err}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true) // the default; say it
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	if c.closed.Load() { // Close ran before conn was set
		c.drop()
		return &Error{Kind: Transport, Err: errClosed}
	}
	if c.br == nil {
		c.br = bufio.NewReaderSize(conn, readBuffer)
	} else {
		c.br.Reset(conn)
	}
	c.reused = false
	return nil
}

// drop closes the connection; the next Do dials again.
func (c *HTTPClient) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		_ = c.conn.Close() // broken or done with: nothing to report
		c.conn = nil
	}
}

// readAnswer reads one answer: its status, whether the connection may
// carry another request, and its body into c.body.
func (c *HTTPClient) readAnswer() (status int, keep bool, err error) {
	c.body = c.body[:0]
	for range 8 { // 1xx interim answers come before the final one
		status, err = c.readStatus()
		if err != nil {
			return 0, false, err
		}
		length, chunked, closeConn, err := c.readHeader()
		if err != nil {
			return 0, false, err
		}
		switch {
		case status >= 100 && status < 200 && status != 101:
			continue
		case status == 101:
			return 0, false, fmt.Errorf("unexpected 101 Switching Protocols")
		case status == 204 || status == 304:
			return status, !closeConn, nil
		case chunked:
			return status, !closeConn, c.readChunked()
		case length >= 0:
			return status, !closeConn, c.readBody(length)
		default: // the body runs to the end of the connection
			err := c.readToEOF()
			return status, false, err
		}
	}
	return 0, false, errors.New("too many interim (1xx) answers")
}

// readLine returns the next line without its CRLF (or LF); it is valid
// until the next read.
func (c *HTTPClient) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("a line of the answer is longer than %d bytes", readBuffer)
		}
		if errors.Is(err, io.EOF) && len(line) == 0 {
			if c.reused {
				return nil, fmt.Errorf("connection closed by the server before the answer (keep-alive): %w", err)
			}
			return nil, fmt.Errorf("connection closed by the server before the answer: %w", err)
		}
		return nil, fmt.Errorf("read: %w", err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// readStatus reads the status line: HTTP/1.x NNN reason.
func (c *HTTPClient) readStatus() (int, error) {
	line, err := c.readLine()
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, fmt.Errorf("malformed status line %q", truncate(line))
	}
	status := 0
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return 0, fmt.Errorf("malformed status line %q", truncate(line))
		}
		status = status*10 + int(d-'0')
	}
	return status, nil
}

// readHeader reads the header fields up to the blank line and returns
// what framing needs: Content-Length (-1 if absent), whether the body is
// chunked, and whether the server closes the connection. HTTP/1.0
// answers are not expected (the request is HTTP/1.1).
func (c *HTTPClient) readHeader() (length int64, chunked, closeConn bool, err error) {
	length = -1
	for range maxHeaderLines {
		line, err := c.readLine()
		if err != nil {
			return 0, false, false, err
		}
		if len(line) == 0 {
			return length, chunked, closeConn, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return 0, false, false, fmt.Errorf("malformed header line %q", truncate(line))
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case equalFold(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (length >= 0 && n != length) {
				return 0, false, false, fmt.Errorf("bad Content-Length %q", truncate(value))
			}
			length = n
		case equalFold(name, "transfer-encoding"):
			if !equalFold(value, "chunked") {
				return 0, false, false, fmt.Errorf("unsupported Transfer-Encoding %q", truncate(value))
			}
			chunked = true
		case equalFold(name, "connection"):
			if equalFold(value, "close") {
				closeConn = true
			}
		}
	}
	return 0, false, false, fmt.Errorf("more than %d header lines", maxHeaderLines)
}

// readBody reads n bytes of body: into c.body if it may be the expected
// one, else skipped.
func (c *HTTPClient) readBody(n int64) error {
	if n > maxBody || (c.want != nil && n != int64(len(c.want))) {
		if _, err := c.br.Discard(int(n)); err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		c.body = append(c.body[:0], "(skipped "...)
		c.body = strconv.AppendInt(c.body, n, 10)
		c.body = append(c.body, " bytes)"...)
		return nil
	}
	c.body = slices.Grow(c.body[:0], int(n))[:n]
	if _, err := io.ReadFull(c.br, c.body); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	return nil
}

// readChunked reads a chunked body (RFC 9112 section 7.1) and its
// trailer section.
func (c *HTTPClient) readChunked() error {
	for range maxBody { // each chunk has at least one byte
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions are ignored
		}
		size, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 63)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", truncate(line))
		}
		if size == 0 {
			for range maxHeaderLines { // trailers, up to the blank line
				line, err := c.readLine()
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
			return fmt.Errorf("more than %d trailer lines", maxHeaderLines)
		}
		if int64(len(c.body))+int64(size) > maxBody {
			return fmt.Errorf("chunked body over %d bytes", maxBody)
		}
		n := len(c.body)
		c.body = slices.Grow(c.body, int(size))[:n+int(size)]
		if _, err := io.ReadFull(c.br, c.body[n:]); err != nil {
			return fmt.Errorf("read chunk: %w", err)
		}
		if line, err := c.readLine(); err != nil || len(line) != 0 {
			return fmt.Errorf("chunk not followed by CRLF")
		}
	}
	return fmt.Errorf("chunked body over %d chunks", maxBody)
}

// readToEOF reads a body delimited by the end of the connection.
func (c *HTTPClient) readToEOF() error {
	b, err := io.ReadAll(io.LimitReader(c.br, maxBody+1))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(b) > maxBody {
		return fmt.Errorf("body over %d bytes", maxBody)
	}
	c.body = append(c.body[:0], b...)
	return nil
}

// equalFold reports whether b equals the lower-case ASCII s, ignoring
// case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		ch := b[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != s[i] {
			return false
		}
	}
	return true
}

// truncate keeps error messages short.
func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// HTTP runs cfg against t, one HTTPClient per worker: Run with
// NewHTTPClient.
func HTTP(ctx context.Context, cfg Config, t Target) (*Result, error) {
	return Run(ctx, cfg, func(int) (Requester, error) { return NewHTTPClient(t), nil })
}
