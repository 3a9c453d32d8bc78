package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
)

// RunnerMetadata is the service metadata key under which a runner gives
// its stable id. A runner re-registers with the NATS services framework
// when the catalog changes, which gives it a new instance id each time;
// this one stays for the runner's life.
const RunnerMetadata = "runner"

// quietGap ends discovery early: once runners have answered, a gap this
// long without another answer means they all have (it allows for runners
// attached to other nodes of a cluster, one route hop further).
const quietGap = 250 * time.Millisecond

// Serving counts, for each function, the runners serving it now, asking
// every runner through NATS services discovery ($SRV.INFO.shoal-runner).
// It returns once no answer came for 250 ms after the last one, or after
// wait at most.
func Serving(ctx context.Context, nc *nats.Conn, wait time.Duration) (map[string]int, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("catalog: discover runners: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.INFO."+invocation.ServiceName, inbox, nil); err != nil {
		return nil, fmt.Errorf("catalog: discover runners: %w", err)
	}
	runners := map[string]map[string]bool{} // function → runner ids
	deadline := time.Now().Add(wait)
	gap := wait
	for {
		next := min(time.Until(deadline), gap)
		if next <= 0 || ctx.Err() != nil {
			break
		}
		msg, err := sub.NextMsg(next)
		if err != nil {
			break // timeout: the runners have answered
		}
		gap = quietGap
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) != nil {
			continue
		}
		id := info.ID
		if rid := info.Metadata[RunnerMetadata]; rid != "" {
			id = rid
		}
		for _, ep := range info.Endpoints {
			name, ok := strings.CutPrefix(ep.Subject, invocation.SubjectPrefix)
			if !ok {
				continue
			}
			if runners[name] == nil {
				runners[name] = map[string]bool{}
			}
			runners[name][id] = true
		}
	}
	out := make(map[string]int, len(runners))
	for name, ids := range runners {
		out[name] = len(ids)
	}
	return out, nil
}

// FunctionStatus is a deployed function as GET /system/functions and
// `shoal list` show it.
type FunctionStatus struct {
	manifest.Spec
	// Revision is the catalog revision of this definition; 0 for a
	// function served from a file rather than the catalog.
	Revision uint64    `json:"revision"`
	Deployed time.Time `json:"deployed,omitzero"`
	// Runners counts the runners serving the function now; 0 means no
	// runner can serve it, and invoking it answers 503 no_runner.
	Runners int `json:"runners"`
}

// Describe pairs each entry with the number of runners serving it.
func Describe(entries []Entry, serving map[string]int) []FunctionStatus {
	out := make([]FunctionStatus, 0, len(entries))
	for _, e := range entries {
		out = append(out, FunctionStatus{Spec: e.Function.Spec(), Revision: e.Revision, Deployed: e.Deployed, Runners: serving[e.Function.Name]})
	}
	return out
}
