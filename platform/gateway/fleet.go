package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/shoal-dev/shoal/platform/traffic"
)

// The stats exchange. Each gateway knows the traffic it answered only,
// and several gateways behind a load balancer answer a console's polls in
// turn; so GET /system/stats asks every gateway on the NATS system for
// its counts (traffic.Counts) and merges them with its own, and any
// gateway answers the figures of all (docs/nats-api.md, "Gateways' live
// figures").
//
// Every gateway subscribes to StatsSubject, in no queue group. One that
// serves GET /system/stats subscribes to a reply subject of its own
// under StatsReplyPrefix, publishes a StatsRequest there with that reply
// subject, and gathers the replies until none came for statsQuietGap, or
// for statsMaxWait at most. A reply is the counts' JSON, or no data and
// HeaderStatsError. Each gateway has a random id, sent in HeaderGateway on
// requests and replies, so that it ignores its own request.
const (
	// StatsSubject is where a gateway asks every gateway for its counts.
	StatsSubject = "shoal.stats"
	// StatsReplyPrefix starts the reply subject of a stats request,
	// followed by one token unique to the request. The replies do not go
	// to an inbox: gateways may not publish into each other's inboxes,
	// where the answers of invocations arrive.
	StatsReplyPrefix = "shoal.stats.reply."
	// HeaderGateway carries the id of the gateway that sent a stats
	// request or reply: random, one per Gateway.
	HeaderGateway = "Shoal-Gateway"
	// HeaderStatsError, on a stats reply with no data, says why the
	// gateway sent no counts (e.g. they would not fit in a NATS message).
	HeaderStatsError = "Shoal-Stats-Error"
)

// StatsRequest is the JSON data of a stats request: the functions,
// window and step of GET /system/stats, in seconds.
type StatsRequest struct {
	Functions []string `json:"functions"`
	Window    int      `json:"window"`
	Step      int      `json:"step"`
}

// How long GET /system/stats waits for the other gateways' counts: from
// the request, and after each reply, until statsQuietGap passes without
// one, and statsMaxWait at most. Replies come within milliseconds (a
// gateway reads and encodes its counts in about one, BenchmarkStatsReply);
// the gap also covers gateways one route hop away in a NATS cluster. It
// starts at the request, not at a first reply: a gateway alone would
// otherwise wait statsMaxWait on every poll.
const (
	statsQuietGap = 100 * time.Millisecond
	statsMaxWait  = 500 * time.Millisecond
)

// statsMaxGateways bounds the other gateways' replies one GET
// /system/stats merges: more is no fleet Shoal runs, but a flood of
// replies under made-up ids, which would hold memory and could push the
// sums past what the figures are computed in. Past it, the answer is
// partial.
const statsMaxGateways = 255

// statsHeaderRoom is kept free of counts in a reply, under the
// connection's max payload, for the reply's headers.
const statsHeaderRoom = 1 << 10

// subscribeStats subscribes the gateway to other gateways' stats
// requests.
func (g *Gateway) subscribeStats() error {
	sub, err := g.nc.Subscribe(StatsSubject, g.answerStats)
	if err != nil {
		return fmt.Errorf("gateway: subscribe to %s: %w", StatsSubject, err)
	}
	g.statsSub = sub
	return nil
}

// answerStats answers another gateway's stats request with this
// gateway's counts. It runs on the subscription's goroutine: reading
// and encoding the counts the console asks for take about a millisecond.
// A request of its own, or whose reply subject is not under
// StatsReplyPrefix (an answer steered elsewhere), is left unanswered.
func (g *Gateway) answerStats(msg *nats.Msg) {
	if msg.Header.Get(HeaderGateway) == g.id || !strings.HasPrefix(msg.Reply, StatsReplyPrefix) {
		return
	}
	reply := &nats.Msg{Subject: msg.Reply, Header: nats.Header{HeaderGateway: {g.id}}}
	data, err := g.encodeCounts(msg.Data)
	if err != nil {
		g.log.Warn("stats request not answered with counts", "from", msg.Header.Get(HeaderGateway), "error", err)
		// A header value holds no line break.
		reply.Header[HeaderStatsError] = []string{strings.NewReplacer("\r", " ", "\n", " ").Replace(err.Error())}
	} else {
		reply.Data = data
	}
	if err := g.nc.PublishMsg(reply); err != nil {
		g.log.Warn("cannot answer a stats request", "subject", msg.Reply, "error", err)
	}
}

// encodeCounts returns the JSON of the counts a StatsRequest asks for, or
// why there is none.
func (g *Gateway) encodeCounts(data []byte) ([]byte, error) {
	var req StatsRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, fmt.Errorf("malformed stats request: %w", err)
	}
	// Bounded before the conversion to durations, which could overflow.
	if req.Window < 1 || req.Window > 1<<20 || req.Step < 1 || req.Step > 1<<20 {
		return nil, fmt.Errorf("%w: window %ds, step %ds", traffic.ErrBadWindow, req.Window, req.Step)
	}
	c, err := g.metrics.traffic.Counts(req.Functions, time.Duration(req.Window)*time.Second, time.Duration(req.Step)*time.Second)
	if err != nil {
		return nil, err
	}
	out, err := c.MarshalJSON()
	if err != nil {
		return nil, err
	}
	if limit := g.nc.MaxPayload() - statsHeaderRoom; int64(len(out)) > limit {
		return nil, fmt.Errorf("the counts of %d functions take %d bytes, over the %d a NATS message holds here (max_payload)", len(req.Functions), len(out), limit)
	}
	return out, nil
}

// fleetSnapshot returns the figures of the functions named over the
// window in steps, merged from the counts of every gateway that answered
// a stats request in time and this one's own, read last so that its
// clock ends the window. They are Partial when the request could not be
// sent, or a gateway sent no counts or counts that do not merge. window
// and step must have passed traffic.CheckWindow.
func (g *Gateway) fleetSnapshot(ctx context.Context, names []string, window, step time.Duration) (*traffic.Snapshot, error) {
	others, partial := g.gatherCounts(ctx, names, window, step)
	own, err := g.metrics.traffic.Counts(names, window, step)
	if err != nil {
		return nil, fmt.Errorf("read the gateway's counts: %w", err)
	}
	for _, o := range others {
		// A gateway whose clock is a step or more off counts steps
		// outside this window, which Merge leaves out.
		if skew := o.counts.Now().Sub(own.Now()).Abs(); skew >= step {
			g.log.Warn("a gateway's clock is off; its figures are in part left out", "gateway", o.gateway, "skew", skew)
			partial = true
		}
		if err := own.Merge(o.counts); err != nil {
			g.log.Warn("a gateway's counts do not merge", "gateway", o.gateway, "error", err)
			partial = true
		}
	}
	snap := own.Snapshot()
	snap.Partial = partial
	return snap, nil
}

// gatewayCounts are the counts of one other gateway.
type gatewayCounts struct {
	gateway string
	counts  *traffic.Counts
}

// gatherCounts asks the other gateways for their counts and returns
// those that came in time, and whether any could not be had.
func (g *Gateway) gatherCounts(ctx context.Context, names []string, window, step time.Duration) (out []gatewayCounts, partial bool) {
	if !g.nc.IsConnected() {
		return nil, true
	}
	req, err := json.Marshal(StatsRequest{Functions: names, Window: int(window / time.Second), Step: int(step / time.Second)})
	if err != nil {
		g.log.Error("encode a stats request", "error", err)
		return nil, true
	}
	reply := StatsReplyPrefix + nuid.Next()
	// Subscribed before the request is sent, on the same connection: the
	// server has the subscription before any gateway can answer.
	sub, err := g.nc.SubscribeSync(reply)
	if err != nil {
		g.log.Warn("cannot ask the other gateways for their figures", "subject", reply, "error", err)
		return nil, true
	}
	defer func() { _ = sub.Unsubscribe() }() // fails only once the connection is closed
	msg := &nats.Msg{Subject: StatsSubject, Reply: reply, Header: nats.Header{HeaderGateway: {g.id}}, Data: req}
	if err := g.nc.PublishMsg(msg); err != nil {
		g.log.Warn("cannot ask the other gateways for their figures", "subject", StatsSubject, "error", err)
		return nil, true
	}
	asked := make(map[string]bool, len(names))
	for _, n := range names {
		asked[n] = true
	}
	seen := map[string]bool{g.id: true}
	deadline := time.Now().Add(statsMaxWait)
	for ctx.Err() == nil {
		wait := min(time.Until(deadline), statsQuietGap)
		if wait <= 0 {
			break
		}
		m, err := sub.NextMsg(wait)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			g.log.Warn("stats replies cut short", "error", err)
			partial = true
			break
		}
		c, err := readCounts(m, asked)
		id := m.Header.Get(HeaderGateway)
		switch {
		case err != nil:
			g.log.Warn("a stats reply left out", "gateway", id, "error", err)
			partial = true
		case seen[id]:
			g.log.Warn("a second stats reply from one gateway left out", "gateway", id)
		case len(out) == statsMaxGateways:
			g.log.Warn("stats replies past the most gateways merged left out", "gateway", id, "most", statsMaxGateways)
			partial = true
		default:
			seen[id] = true
			out = append(out, gatewayCounts{gateway: id, counts: c})
		}
	}
	if n, _ := sub.Dropped(); n > 0 {
		partial = true
	}
	return out, partial
}

// readCounts returns the counts of a stats reply, which must name its
// gateway and count only functions asked for.
func readCounts(m *nats.Msg, asked map[string]bool) (*traffic.Counts, error) {
	if m.Header.Get(HeaderGateway) == "" {
		return nil, fmt.Errorf("no %s header: not a gateway's reply", HeaderGateway)
	}
	if e := m.Header.Get(HeaderStatsError); e != "" {
		return nil, fmt.Errorf("the gateway sent no counts: %s", e)
	}
	c := new(traffic.Counts)
	if err := c.UnmarshalJSON(m.Data); err != nil {
		return nil, err
	}
	for _, n := range c.Functions() {
		if !asked[n] {
			return nil, fmt.Errorf("counts of function %q, not asked for", n)
		}
	}
	return c, nil
}
