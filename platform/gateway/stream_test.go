package gateway_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// TestStreamSSE: a function that flushes an event and runs on has it
// reach the HTTP client at once, the next one when written, and a clean
// end; built in, and as a process behind the runner's reverse proxy.
func TestStreamSSE(t *testing.T) {
	p := startStreaming(t)
	for _, fn := range []string{"sse", "ssep"} {
		t.Run(fn, func(t *testing.T) {
			start := time.Now()
			resp, err := http.Get(p.url + "/function/" + fn)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, header %v", resp.StatusCode, resp.Header)
			}
			if resp.ContentLength != -1 {
				t.Errorf("Content-Length %d on a streamed answer", resp.ContentLength)
			}
			br := bufio.NewReader(resp.Body)
			first, err := br.ReadString('\n')
			took := time.Since(start)
			if err != nil || first != "data: one\n" {
				t.Fatalf("first line %q, %v", first, err)
			}
			if took > sseGap*2/3 {
				t.Errorf("the first event took %s, want it well before the function ends (%s)", took, sseGap)
			}
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("the answer did not end cleanly: %v", err)
			}
			if string(rest) != "\ndata: two\n\n" {
				t.Errorf("rest %q", rest)
			}
			if time.Since(start) < sseGap {
				t.Errorf("the answer ended after %s, before the function wrote its second event", time.Since(start))
			}
		})
	}
}

// TestStreamLargerThanAMessage: an answer of three NATS messages arrives
// whole through the gateway, built in and from a process; a NATS caller
// that does not accept a streamed answer gets 500 response_too_large.
func TestStreamLargerThanAMessage(t *testing.T) {
	p := startStreaming(t)
	n := 3 * streamPayload
	want := sha256.Sum256(bulkBytes(n))
	for _, fn := range []string{"bulk", "ssep/bulk"} {
		t.Run(fn, func(t *testing.T) {
			r := do(t, newRequest(t, "GET", p.url+"/function/"+fn+"?n="+strconv.Itoa(n), nil))
			if r.status != 200 || len(r.body) != n || sha256.Sum256([]byte(r.body)) != want {
				t.Fatalf("status %d, %d bytes, want %d bytes of sha256 %x", r.status, len(r.body), n, want)
			}
		})
	}
	t.Run("NATS caller without accept", func(t *testing.T) {
		nc, err := nats.Connect(p.broker.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		msg := nats.NewMsg(invocation.Subject("bulk"))
		msg.Header.Set(invocation.HeaderQuery, "n="+strconv.Itoa(n))
		reply, err := nc.RequestMsg(msg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code := reply.Header.Get(invocation.HeaderError); code != string(invocation.CodeResponseTooLarge) {
			t.Errorf("code %q, want %s (%v)", code, invocation.CodeResponseTooLarge, reply.Header)
		}
	})
}

// TestStreamBackpressure: a client that stops reading a large streamed
// answer stops the function: its writes block once the buffers on the
// way (TCP's, and the runner's window of messages) are full, instead of
// the answer piling up in the gateway; read on, it arrives whole.
func TestStreamBackpressure(t *testing.T) {
	p := startStreaming(t)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(64 << 10)
		}
		return c, err
	}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(p.url + "/function/firehose")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	// Not reading: what the function writes must level off.
	time.Sleep(500 * time.Millisecond)
	before := p.written.Load()
	time.Sleep(500 * time.Millisecond)
	after := p.written.Load()
	const bound = 16 << 20 // TCP buffers on loopback, a few messages
	if after > bound || after != before {
		t.Fatalf("the function wrote %d bytes, then %d, while the client read nothing: want it blocked under %d bytes", before, after, bound)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n+1024 != firehoseTotal {
		t.Fatalf("read %d more bytes, %v; want %d in all", n, err, firehoseTotal)
	}
}

// TestStreamClientGone: a client that disconnects mid-stream has the
// function's context cancelled at once, and its concurrency slot freed.
func TestStreamClientGone(t *testing.T) {
	p := startStreaming(t)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", p.url+"/function/tick", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for range 3 {
		if line, err := br.ReadString('\n'); err != nil || line != "tick\n" {
			t.Fatalf("%q, %v", line, err)
		}
	}
	gone := time.Now()
	cancel()
	resp.Body.Close()
	select {
	case at := <-p.cancelled:
		if d := at.Sub(gone); d > time.Second {
			t.Errorf("the function saw its context end %s after the client left", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the function's context did not end after the client left")
	}
	waitFor(t, "the runner's in-flight count back to 0", func() bool {
		s, _ := p.runner.Stats("tick")
		return s.InFlight == 0
	})
	if s, _ := p.runner.Stats("tick"); s.Errors != 0 || s.Completed != 1 {
		t.Errorf("stats %+v: want 1 completed, no error (the client left)", s)
	}
}

// TestStreamTimeout: a function whose timeout passes mid-stream, whether
// it stops (tickshort) or runs on (stubborn), has its answer cut short:
// the client gets an error, not a clean end, at the timeout, and the
// runner counts a timeout.
func TestStreamTimeout(t *testing.T) {
	p := startStreaming(t)
	for _, fn := range []string{"tickshort", "stubborn"} {
		t.Run(fn, func(t *testing.T) {
			start := time.Now()
			resp, err := http.Get(p.url + "/function/" + fn)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("the answer ended cleanly after %s (%d bytes): want it cut short", time.Since(start), len(body))
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("read error: %v", err)
			}
			if !strings.HasPrefix(string(body), "tick\n") {
				t.Errorf("body %q", body)
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("cut short after %s, want about the timeout (500ms)", d)
			}
			waitFor(t, "a timeout counted", func() bool {
				s, _ := p.runner.Stats(fn)
				return s.Timeouts == 1 && s.Errors == 1
			})
		})
	}
}

// TestStreamProcessCrash: a process that exits part way through its
// answer has it cut short, not ended as if whole.
func TestStreamProcessCrash(t *testing.T) {
	p := startStreaming(t)
	resp, err := http.Get(p.url + "/function/ssep/crash")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("the answer ended cleanly (%q): want it cut short", body)
	}
	if string(body) != "data: one\n\n" {
		t.Errorf("body %q", body)
	}
	waitFor(t, "an error counted", func() bool {
		s, _ := p.runner.Stats("ssep")
		return s.Errors == 1 && strings.HasPrefix(s.LastError, string(invocation.CodeFunctionCrashed))
	})
}

// TestStreamRunnerLost: a streamed answer whose runner is reported gone
// is cut short at once, not at the function's timeout.
func TestStreamRunnerLost(t *testing.T) {
	p := startStreaming(t)
	resp, err := http.Get(p.url + "/function/tick")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("%q, %v", line, err)
	}
	lost := time.Now()
	if n := p.gateway.RunnerLost(p.runner.ID()); n != 1 {
		t.Errorf("RunnerLost failed %d invocations, want 1", n)
	}
	if _, err := io.ReadAll(br); err == nil {
		t.Fatal("the answer ended cleanly: want it cut short")
	}
	if d := time.Since(lost); d > time.Second {
		t.Errorf("cut short %s after the runner was reported lost", d)
	}
}

// TestStreamOnlyWhenNeeded: a caller that accepts a streamed answer still
// gets a quick answer as one message, flushed or not, built in or from a
// process.
func TestStreamOnlyWhenNeeded(t *testing.T) {
	p := startStreaming(t)
	nc, err := nats.Connect(p.broker.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, tt := range []struct{ fn, path, body string }{
		{"quick", "", "quick"},
		{"ssep", "/small", "small"},
	} {
		t.Run(tt.fn+tt.path, func(t *testing.T) {
			for range 20 {
				inbox := nc.NewInbox()
				sub, err := nc.SubscribeSync(inbox)
				if err != nil {
					t.Fatal(err)
				}
				msg := nats.NewMsg(invocation.Subject(tt.fn))
				msg.Header.Set(invocation.HeaderStream, invocation.StreamAccept)
				if tt.path != "" {
					msg.Header.Set(invocation.HeaderPath, tt.path)
				}
				msg.Reply = inbox
				if err := nc.PublishMsg(msg); err != nil {
					t.Fatal(err)
				}
				reply, err := sub.NextMsg(5 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if string(reply.Data) != tt.body || invocation.StreamPart(reply.Header) != "" {
					t.Fatalf("reply %q %v: want %q in one plain reply", reply.Data, reply.Header, tt.body)
				}
				if more, err := sub.NextMsg(50 * time.Millisecond); err == nil {
					t.Fatalf("a second message: %q %v", more.Data, more.Header)
				}
				_ = sub.Unsubscribe()
			}
		})
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStreamClientGoneBeforeStart: a client that leaves before its
// answer's stream starts gets its function cancelled as the stream
// starts, rather than left blocked on flow control until its timeout.
func TestStreamClientGoneBeforeStart(t *testing.T) {
	p := startStreaming(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", p.url+"/function/late", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the client got %d before its deadline", resp.StatusCode)
	}
	gone := time.Now()
	select {
	case at := <-p.cancelled:
		t.Logf("the function was cancelled %v after the client left", at.Sub(gone).Round(time.Millisecond))
	case <-time.After(3 * time.Second):
		st, _ := p.runner.Stats("late")
		t.Errorf("the function was not cancelled 3 s after its client left: %+v", st)
	}
}
