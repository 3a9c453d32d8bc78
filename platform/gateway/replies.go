package gateway

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// errRunnerLost fails an invocation whose runner was reported gone
// (Gateway.RunnerLost) after it acked the invocation.
var errRunnerLost = errors.New("gateway: the runner of the invocation is gone")

// lostReply is delivered to a call in place of an answer when its runner
// is reported gone, and lostUnackedReply when no runner acknowledged it
// before one was reported gone; they are compared by address, never read.
var (
	lostReply        = new(nats.Msg)
	lostUnackedReply = new(nats.Msg)
)

// errRunnerLostUnacked fails an invocation no runner acknowledged within
// the grace after a runner was reported gone.
var errRunnerLostUnacked = errors.New("gateway: no runner acknowledged the invocation before a runner was lost")

// ackRequested is the value of the Shoal-Ack header on every invocation
// sent with acks on. Messages are encoded, never modified, once built:
// nothing may write into it.
var ackRequested = []string{invocation.AckRequested}

// lostMemory is how long a runner reported gone is remembered, so that
// an ack it sent just before dying, arriving after the report, fails its
// invocation at once too. Acks travel in milliseconds; a minute is ample.
const lostMemory = time.Minute

// replyMux receives the replies of invocations. nats.go's request helpers
// keep only the first message of a reply subject, and an acked invocation
// gets two, the ack and then the answer, so the gateway has its own mux,
// as nats.go's: one wildcard subscription on an inbox, one reply subject
// per invocation below it, and a map from the subject's last token to the
// caller waiting on it. It serves invocations without acks too: one path,
// and a deadline kept with a timer rather than a context derived from the
// HTTP request's, whose registration with its parent costs more.
//
// Acks tell the mux which runner runs which invocation; when a runner is
// reported gone, its invocations are answered at once instead of at their
// timeout.
type replyMux struct {
	nc *nats.Conn
	// acks asks runners to acknowledge the invocations they take.
	acks bool
	// prefix is the inbox the subscription covers, with a trailing dot.
	prefix string
	next   atomic.Uint64
	// closed is closed when the subscription ends with the connection.
	closed chan struct{}
	// sub is the subscription to the inbox.
	sub *nats.Subscription

	mu    sync.Mutex
	calls map[string]*call
	// lost holds the runners reported gone, with when.
	lost map[string]time.Time
}

// call is one invocation waiting for its answer.
type call struct {
	reply string
	// token is the last token of reply, the key in replyMux.calls.
	token string
	// answer receives the answer, or lostReply; the first one wins. A
	// streamed answer's messages all come through it, in order: the
	// runner's window (invocation.StreamWindow), an error end beyond it,
	// and a lostReply fit.
	answer chan *nats.Msg
	// runner acked the call and has not answered it; guarded by the
	// mux's mu.
	runner string
	// acked is set by the call's ack; guarded by the mux's mu.
	acked bool
}

func newReplyMux(nc *nats.Conn, acks bool) (*replyMux, error) {
	m := &replyMux{
		nc:     nc,
		acks:   acks,
		prefix: nc.NewInbox() + ".",
		closed: make(chan struct{}),
		calls:  make(map[string]*call),
		lost:   make(map[string]time.Time),
	}
	sub, err := nc.Subscribe(m.prefix+"*", m.receive)
	if err != nil {
		return nil, err
	}
	// Called once the subscription's last message has been handled, when
	// the connection closes: the calls still waiting would wait in vain.
	sub.SetClosedHandler(func(string) { close(m.closed) })
	m.sub = sub
	return m, nil
}

// request sends msg, with an ack requested if the mux asks for acks, and
// waits for its answer, for at most wait and until ctx is done. Errors
// are those of nats.go's requests (ErrNoResponders, ErrTimeout past
// wait, the context's, the connection's), plus errRunnerLost and
// errRunnerLostUnacked. When the answer is the start of a streamed one,
// the call is returned too, still registered: its next messages arrive
// on its answer channel, and the caller unregisters it when done.
func (m *replyMux) request(ctx context.Context, msg *nats.Msg, wait time.Duration) (*nats.Msg, *call, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c := m.register()
	streaming := false
	defer func() {
		if !streaming {
			m.unregister(c)
		}
	}()
	msg.Reply = c.reply
	if m.acks {
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		msg.Header[invocation.HeaderAck] = ackRequested
	}
	if err := m.nc.PublishMsg(msg); err != nil {
		return nil, nil, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case reply := <-c.answer:
		if err := lostError(reply); err != nil {
			return nil, nil, err
		}
		if invocation.IsNoResponders(reply) {
			return nil, nil, nats.ErrNoResponders
		}
		if invocation.StreamPart(reply.Header) == invocation.StreamStart {
			streaming = true
			return reply, c, nil
		}
		return reply, nil, nil
	case <-timer.C:
		return nil, nil, nats.ErrTimeout
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-m.closed:
		return nil, nil, nats.ErrConnectionClosed
	}
}

// lostError is the error a lostReply or lostUnackedReply stands for; nil
// for a message from a runner.
func lostError(msg *nats.Msg) error {
	switch msg {
	case lostReply:
		return errRunnerLost
	case lostUnackedReply:
		return errRunnerLostUnacked
	}
	return nil
}

func (m *replyMux) register() *call {
	// One allocation for the subject: the prefix is an inbox, well under
	// the buffer's size.
	var buf [128]byte
	b := append(buf[:0], m.prefix...)
	b = strconv.AppendUint(b, m.next.Add(1), 36)
	reply := string(b)
	c := &call{reply: reply, token: reply[len(m.prefix):], answer: make(chan *nats.Msg, invocation.StreamWindow+2)}
	m.mu.Lock()
	m.calls[c.token] = c
	m.mu.Unlock()
	return c
}

func (m *replyMux) unregister(c *call) {
	m.mu.Lock()
	delete(m.calls, c.token)
	m.mu.Unlock()
}

// receive handles a message on the inbox: an ack records which runner
// runs the call, anything else is the call's answer.
func (m *replyMux) receive(msg *nats.Msg) {
	token, ok := strings.CutPrefix(msg.Subject, m.prefix)
	if !ok || token == "" {
		return
	}
	runner, isAck := invocation.ReadAck(msg)
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls[token]
	if c == nil {
		// The caller stopped waiting (its client went away) before the
		// answer came: a streamed answer is cancelled, or its function
		// would block on its flow control until its timeout.
		if p := invocation.StreamPart(msg.Header); msg.Reply != "" && (p == invocation.StreamStart || p == invocation.StreamData) {
			// A failed publish (NATS gone) leaves the runner to its
			// "no responders" or its deadline: nothing better to do.
			_ = m.nc.PublishMsg(&nats.Msg{Subject: msg.Reply, Header: streamCancel})
		}
		return
	}
	switch part := invocation.StreamPart(msg.Header); {
	case !isAck && part == invocation.StreamStart:
		// A streamed answer names its runner, which runs on until
		// its end; it counts as the call's ack.
		runner := msg.Header.Get(invocation.HeaderAck)
		c.acked = true
		c.runner = runner
		deliver(c, msg)
		if runner != "" && m.isLost(runner) {
			c.runner = ""
			deliver(c, lostReply)
		}
	case !isAck && part == invocation.StreamData:
		deliver(c, msg)
	case !isAck:
		c.runner = ""
		deliver(c, msg)
	case c.acked:
		// A second ack: the protocol has one per invocation. Keep the
		// first runner.
	case m.isLost(runner):
		// Sent just before the runner died, and overtaken by the news.
		c.acked = true
		deliver(c, lostReply)
	default:
		c.runner = runner
		c.acked = true
	}
}

// isLost reports whether runner was reported gone; m.mu is held.
func (m *replyMux) isLost(runner string) bool {
	_, gone := m.lost[runner]
	return gone
}

// deliver hands msg to c's caller, unless it has had its answer already.
func deliver(c *call, msg *nats.Msg) {
	select {
	case c.answer <- msg:
	default:
	}
}

// unackedGrace is how long, after a runner is reported gone, a call
// that no runner has acknowledged yet gets to receive its ack. A live
// Shoal runner acks an invocation once it has run its ack delay (10 ms
// by default; runner.DefaultAckDelay) and answers sooner ones without
// an ack; a call still unanswered and unacknowledged past the grace had
// most likely reached the dead runner, which died before its ack went
// out, and is answered runner_lost too, with a message that says so. A responder that never acks (not a Shoal runner) would see
// its long calls answered so: with acks on, all responders should be
// Shoal runners.
const unackedGrace = 2 * time.Second

// runnerLost answers every call runner acked and has not answered with
// lostReply, and remembers runner as gone. It returns how many calls it
// answered. Calls not acknowledged by any runner yet are answered the same
// way if they are still unacknowledged after unackedGrace.
func (m *replyMux) runnerLost(runner string) int {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, at := range m.lost {
		if now.Sub(at) > lostMemory {
			delete(m.lost, id)
		}
	}
	m.lost[runner] = now
	answered := 0
	var unacked []*call
	for _, c := range m.calls {
		switch {
		case c.runner == runner:
			c.runner = ""
			deliver(c, lostReply)
			answered++
		case !c.acked:
			unacked = append(unacked, c)
		}
	}
	if len(unacked) > 0 {
		time.AfterFunc(unackedGrace, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			for _, c := range unacked {
				if m.calls[c.token] == c && !c.acked {
					deliver(c, lostUnackedReply)
				}
			}
		})
	}
	return answered
}
