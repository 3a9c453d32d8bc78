package runner

import (
	"bytes"
	"errors"
	"net/http"
	"sync"

	"github.com/shoal-dev/shoal/invocation"
)

// responseWriter buffers a function's answer so that it travels as one
// NATS reply. It refuses to buffer more than a reply can carry.
type responseWriter struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	limit    int
	overflow bool
	// failed is the handler's failure (invocation.ErrorWriter).
	failed *invocation.Error
	// st streams the answer, for a caller that accepts it (st.on).
	st stream
}

var writers = sync.Pool{New: func() any { return &responseWriter{header: make(http.Header, 4)} }}

func getWriter(limit int) *responseWriter {
	w := writers.Get().(*responseWriter)
	w.limit = limit
	return w
}

// putWriter recycles w. Only call it once the function has returned and
// its answer has been sent: the reply shares w's header and body.
func putWriter(w *responseWriter) {
	if w.body.Cap() > 1<<20 {
		return // let large buffers go rather than pin them
	}
	clear(w.header)
	w.status = 0
	w.body.Reset()
	w.overflow = false
	w.failed = nil
	w.st.reset()
	writers.Put(w)
}

// errAnswerTooLarge is returned to a function that writes more than a NATS
// reply can carry; the caller gets 500 response_too_large.
var errAnswerTooLarge = errors.New("shoal: the answer is larger than a NATS message can carry")

func (w *responseWriter) Header() http.Header { return w.header }

// WriteError records the handler's failure: the invocation fails with
// it, whatever else the handler wrote.
func (w *responseWriter) WriteError(e *invocation.Error) {
	if w.failed == nil {
		w.failed = e
	}
}

// WriteHeader records the status, ignoring 1xx informational codes, which
// have no meaning for a buffered answer, and every call after the first.
func (w *responseWriter) WriteHeader(code int) {
	// A streamable answer's status is fixed (stream.arm): only the
	// function's goroutine writes it.
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.st.armed {
		return w.st.write(p)
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.overflow || w.body.Len()+len(p) > w.limit {
		if w.st.on {
			// Too large for one message: streamed, to a caller
			// that takes it.
			return w.st.write(p)
		}
		w.overflow = true
		return 0, errAnswerTooLarge
	}
	if _, ok := w.header["Content-Type"]; !ok && w.body.Len() == 0 && len(p) > 0 {
		// As net/http does: an answer without a Content-Type gets one
		// sniffed from its first bytes.
		w.header.Set("Content-Type", http.DetectContentType(p))
	}
	return w.body.Write(p)
}

// Flush makes the answer streamable when the caller accepts a streamed
// answer (see stream); else it does nothing: the answer is sent whole
// when the function returns.
func (w *responseWriter) Flush() {
	if w.st.on {
		w.st.flush()
	}
}

// statusCode is the answer's status: 200 when the function wrote nothing.
func (w *responseWriter) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}
