package runner

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// Streamed answers (docs/nats-api.md#streamed-answers).
//
// An invocation whose caller accepts a streamed answer (the gateway's
// synchronous ones) is still answered with one reply when that is
// possible: a function that writes its answer and returns costs nothing
// more. The answer is streamed when the function flushes (http.Flusher;
// a process behind httputil.ReverseProxy flushes after every write) and
// is still running streamDelay later, or when it writes more than one
// NATS message can carry. From then on every Flush, and every
// streamChunk bytes written, send a message, at most
// invocation.StreamWindow of them ahead of the caller's
// acknowledgements: a function writing faster than its caller reads
// blocks in Write.

// streamDelay is how long a function that flushed may go on running
// before its answer starts streaming. Quick answers, the most, end
// sooner and travel as one reply; an event stream's first event is late
// by as much.
const streamDelay = 5 * time.Millisecond

// streamChunk is the most body bytes a message of a streamed answer
// carries once it started (the first carries what was buffered).
const streamChunk = 256 << 10

var (
	// errStreamGone is returned to a function writing a streamed answer
	// whose caller went away.
	errStreamGone = errors.New("shoal: the caller of the streamed answer went away")
	// errStreamClosed is returned to a function writing past the end of
	// its answer: its timeout passed, or the runner stopped.
	errStreamClosed = errors.New("shoal: the answer was ended (timeout or shutdown)")
)

// stream is the streaming side of a responseWriter, for an invocation
// whose caller accepts a streamed answer (on). It lives inside the
// pooled writer, so that invocations that are not streamed allocate
// nothing more.
//
// armed is set, by the function's goroutine, once the answer may be
// streamed (a Flush, or an answer outgrowing a message): from then on the
// writer's state is guarded by mu, as the delay's timer and the timeout
// may send from other goroutines.
type stream struct {
	on      bool
	armed   bool
	w       *responseWriter
	e       *endpoint
	d       *definition
	reply   string
	once    *answerOnce
	withAck bool
	ctx     context.Context
	cancel  context.CancelFunc
	start   time.Time
	tr      invocation.Trace

	mu sync.Mutex
	// timer starts the stream streamDelay after the first Flush; kept
	// with the pooled writer. timerSet: it is counting.
	timer    *time.Timer
	timerSet bool
	// hdr is the function's header as of the first Flush, as net/http
	// would have sent it: what the start message carries.
	hdr http.Header
	// returned is set when the function returned: the timer no longer
	// starts the stream.
	returned bool
	started  bool
	ended    bool
	// err fails the function's further writes.
	err      error
	seq      int
	inflight int
	token    string
	ackTo    string
	acks     chan struct{}
	// gone is set when the caller cancelled the stream.
	gone atomic.Bool
}

func (s *stream) init(w *responseWriter, e *endpoint, d *definition, reply string, once *answerOnce, withAck bool,
	ctx context.Context, cancel context.CancelFunc, start time.Time, tr invocation.Trace) {
	s.on, s.w, s.e, s.d, s.reply, s.once, s.withAck = true, w, e, d, reply, once, withAck
	s.ctx, s.cancel, s.start, s.tr = ctx, cancel, start, tr
}

// reset readies s for another invocation; its timer, stopped, is kept.
func (s *stream) reset() {
	s.on, s.armed, s.w, s.e, s.d, s.reply, s.once, s.withAck = false, false, nil, nil, nil, "", nil, false
	s.ctx, s.cancel, s.tr = nil, nil, invocation.Trace{}
	s.timerSet, s.hdr, s.returned, s.started, s.ended, s.err = false, nil, false, false, false, nil
	s.seq, s.inflight, s.token, s.ackTo, s.acks = 0, 0, "", "", nil
	s.gone.Store(false)
}

// arm makes the answer streamable; the function's goroutine calls it
// with mu held. The status and header are fixed now, as net/http fixes
// them at a Flush.
func (s *stream) arm() {
	if s.armed {
		return
	}
	s.armed = true
	w := s.w
	if w.status == 0 {
		w.status = http.StatusOK
	}
	s.hdr = w.header.Clone()
}

// flush is the writer's Flush: the first one after some of the body was
// written starts the delay, later ones (once streaming) send what is
// buffered. A Flush before any of the body (httputil.ReverseProxy flushes
// the header at once) does not count: the body of a quick answer is
// usually a moment behind its header.
func (s *stream) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started && s.w.body.Len() == 0 {
		return
	}
	s.arm()
	switch {
	case s.err != nil || s.ended || s.returned:
	case s.started:
		if s.w.body.Len() > 0 {
			_ = s.sendLocked()
		}
	case !s.timerSet:
		s.timerSet = true
		if s.timer == nil {
			s.timer = time.AfterFunc(streamDelay, s.fire)
		} else {
			s.timer.Reset(streamDelay)
		}
	}
}

// fire starts the stream of a function still running streamDelay after
// it flushed.
func (s *stream) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.timerSet || s.returned || s.started || s.err != nil {
		return
	}
	_ = s.startLocked()
}

// write is the writer's Write once the answer is armed, or outgrows a
// message.
func (s *stream) write(p []byte) (int, error) {
	w := s.w
	s.mu.Lock()
	defer s.mu.Unlock()
	s.arm()
	if s.err != nil {
		return 0, s.err
	}
	if !s.started && w.body.Len() == 0 && len(p) > 0 {
		if _, ok := s.hdr["Content-Type"]; !ok {
			ct := http.DetectContentType(p)
			s.hdr.Set("Content-Type", ct)
			w.header.Set("Content-Type", ct)
		}
	}
	n := 0
	for len(p) > 0 {
		limit := max(w.limit, 1)
		if s.started {
			limit = max(min(w.limit, streamChunk), 1)
		}
		room := limit - w.body.Len()
		if room <= 0 {
			if err := s.sendLocked(); err != nil {
				return n, err
			}
			continue
		}
		k := min(room, len(p))
		w.body.Write(p[:k])
		p = p[k:]
		n += k
	}
	return n, nil
}

// sendLocked sends what is buffered: the start of the answer, or its next
// part once the window allows.
func (s *stream) sendLocked() error {
	if !s.started {
		return s.startLocked()
	}
	if err := s.waitLocked(); err != nil {
		return err
	}
	msg := &nats.Msg{Subject: s.reply, Reply: s.ackTo, Header: nats.Header{
		invocation.HeaderStream:    {invocation.StreamData},
		invocation.HeaderStreamSeq: {strconv.Itoa(s.seq)},
	}, Data: s.w.body.Bytes()}
	return s.publishLocked(msg)
}

// startLocked claims the invocation's answer and sends the start of the
// stream. The timeout's answer may have been sent first: then the
// function's writes fail.
func (s *stream) startLocked() error {
	if !s.once.claim(s.withAck) {
		s.err = errStreamClosed
		return s.err
	}
	s.started = true
	s.acks = make(chan struct{}, invocation.StreamWindow+1)
	s.token = s.e.r.addStream(s)
	s.ackTo = s.e.r.streamPrefix + s.token
	w := s.w
	h := s.hdr
	s.hdr = nil // the message owns it
	msg := invocation.NewResponseMsg(s.reply, w.statusCode(), h, w.body.Bytes())
	s.tr.SetResponse(msg.Header)
	msg.Header[invocation.HeaderStream] = []string{invocation.StreamStart}
	msg.Header[invocation.HeaderStreamSeq] = []string{"0"}
	msg.Header[invocation.HeaderAck] = s.e.r.ackHeader[invocation.HeaderAck]
	msg.Reply = s.ackTo
	return s.publishLocked(msg)
}

func (s *stream) publishLocked(msg *nats.Msg) error {
	if err := s.e.r.nc.PublishMsg(msg); err != nil {
		s.e.r.log.Warn("cannot send part of a streamed answer", "function", s.e.name, "error", err, s.tr.LogAttr())
		s.err = err
		return err
	}
	s.seq++
	s.inflight++
	s.w.body.Reset()
	return nil
}

// waitLocked waits until the window has room for one more message, or
// the invocation's context ends (its timeout, the runner's stop, or the
// caller cancelling).
func (s *stream) waitLocked() error {
	for s.inflight >= invocation.StreamWindow {
		select {
		case <-s.acks:
			s.inflight--
		case <-s.ctx.Done():
			s.err = errStreamClosed
			if s.gone.Load() {
				s.err = errStreamGone
			}
			return s.err
		}
	}
	return nil
}

// settle is called when the function returned, by its goroutine; it
// reports whether the answer is streaming (then end ends it), and whether
// the writer can be recycled as far as the stream is concerned.
func (s *stream) settle() (streaming, recyclable bool) {
	if !s.armed {
		return false, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.returned = true
	recyclable = !s.timerSet || s.timer.Stop()
	s.timerSet = false
	return s.started, recyclable && !s.started
}

// end ends a streamed answer whose function returned: with the rest of
// the body, or with ierr, the invocation's failure. The timeout may have
// ended it already.
func (s *stream) end(ierr *invocation.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if ierr == nil && s.ctx.Err() != nil && !s.gone.Load() {
		// The function returned because its time was up, or the
		// runner stopped: it did not finish its answer.
		ierr = s.e.expired(s.ctx, s.d)
	}
	if ierr == nil && s.err == nil {
		if err := s.waitLocked(); err != nil && !s.gone.Load() {
			ierr = s.e.expired(s.ctx, s.d)
		}
	} else if ierr == nil && s.err != nil && !s.gone.Load() {
		ierr = invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal,
			"the runner could not send function %q's answer: %v", s.e.name, s.err)
	}
	s.endLocked(ierr)
}

// expire ends a stream the invocation's context ended (timeout, stop,
// the caller's cancel) while the function runs on.
func (s *stream) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.ended {
		return
	}
	var ierr *invocation.Error
	if !s.gone.Load() {
		ierr = s.e.expired(s.ctx, s.d)
	}
	s.err = errStreamClosed
	s.endLocked(ierr)
}

// endLocked sends the end of the stream, unless its caller is gone, and
// records the invocation as answered.
func (s *stream) endLocked(ierr *invocation.Error) {
	s.ended = true
	e := s.e
	defer e.r.removeStream(s.token)
	if s.gone.Load() {
		// The caller left: what ended the function (its context,
		// a write error) is not a failure of its own.
		ierr = nil
	}
	var msg *nats.Msg
	if ierr != nil {
		msg = ierr.Msg(s.reply)
		s.tr.SetResponse(msg.Header)
	} else {
		msg = &nats.Msg{Subject: s.reply, Header: nats.Header{}, Data: s.w.body.Bytes()}
	}
	msg.Header[invocation.HeaderStream] = []string{invocation.StreamEnd}
	msg.Header[invocation.HeaderStreamSeq] = []string{strconv.Itoa(s.seq)}
	if s.gone.Load() {
		e.r.log.Debug("the caller of a streamed answer went away; the invocation was cancelled", "function", e.name, s.tr.LogAttr())
		msg = nil
	}
	e.answered(msg, ierr, s.start, s.tr)
	s.w.body.Reset()
}

// addStream registers a stream for its acknowledgements and returns the
// last token of its ack subject.
func (r *Runner) addStream(s *stream) string {
	token := strconv.FormatUint(r.streamSeq.Add(1), 36)
	r.streamsMu.Lock()
	r.streams[token] = s
	r.streamsMu.Unlock()
	return token
}

func (r *Runner) removeStream(token string) {
	r.streamsMu.Lock()
	delete(r.streams, token)
	r.streamsMu.Unlock()
}

// streamAck receives the acknowledgements of streamed answers' messages.
// A cancel (the caller went away) ends the invocation's context at once.
func (r *Runner) streamAck(msg *nats.Msg) {
	token, ok := strings.CutPrefix(msg.Subject, r.streamPrefix)
	if !ok {
		return
	}
	r.streamsMu.Lock()
	s := r.streams[token]
	r.streamsMu.Unlock()
	if s == nil {
		return // ended meanwhile
	}
	// A cancel from the caller, or the NATS server's "no responders"
	// (Status 503, empty): the caller's connection is gone, and nobody
	// will ever acknowledge; either way the function stops at once.
	if invocation.IsStreamCancel(msg.Header) || invocation.IsNoResponders(msg) {
		s.gone.Store(true)
		s.cancel()
		return
	}
	select {
	case s.acks <- struct{}{}:
	default: // more acks than messages: not a caller that follows the protocol
	}
}

// streamInboxPrefix is where a connection's stream acknowledgements
// arrive: below its inbox prefix, where its role may subscribe, but not
// below its general inbox, where its JetStream replies arrive, as
// gateways may publish there (docs/security.md).
func streamInboxPrefix(nc *nats.Conn) string {
	inbox := nc.NewInbox() // PREFIX.NUID
	return inbox[:strings.LastIndexByte(inbox, '.')] + ".stream."
}
