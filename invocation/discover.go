package invocation

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// RunnerMetadata is the service metadata key under which a runner gives
// its stable id. A runner re-registers with the NATS services framework
// when the functions it serves change, which gives it a new instance id
// each time; this one stays for the runner's life.
const RunnerMetadata = "runner"

// UnservableMetadata is the service metadata key under which a runner
// lists the functions it cannot serve, with why, as a JSON object of
// function names to reasons: a
// runtime missing on its machine, code it cannot fetch, processes that
// do not start.
const UnservableMetadata = "unservable"

// quietGap ends discovery early: once runners have answered, a gap this
// long without another answer means they all have (it allows for runners
// attached to other nodes of a cluster, one route hop further).
const quietGap = 250 * time.Millisecond

// Discover asks every runner through NATS services discovery (verb PING,
// INFO or STATS on $SRV.VERB.shoal-runner) and returns the answers. It
// returns once no answer came for 250 ms after the last one, or after
// wait at most, or when ctx ends.
func Discover(ctx context.Context, nc *nats.Conn, verb micro.Verb, wait time.Duration) ([]*nats.Msg, error) {
	subject, err := micro.ControlSubject(verb, ServiceName, "")
	if err != nil {
		return nil, fmt.Errorf("discover runners: %w", err)
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("discover runners: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, fmt.Errorf("discover runners: %w", err)
	}
	var msgs []*nats.Msg
	deadline := time.Now().Add(wait)
	gap := wait
	for {
		next := min(time.Until(deadline), gap)
		if next <= 0 || ctx.Err() != nil {
			return msgs, nil
		}
		msg, err := sub.NextMsg(next)
		if err != nil {
			return msgs, nil // no more answers in time
		}
		msgs = append(msgs, msg)
		gap = quietGap
	}
}

// RunnerID is a runner's stable id from its service identity: the
// RunnerMetadata value, else (a runner of another implementation) the
// instance id.
func RunnerID(id micro.ServiceIdentity) string {
	if rid := id.Metadata[RunnerMetadata]; rid != "" {
		return rid
	}
	return id.ID
}
