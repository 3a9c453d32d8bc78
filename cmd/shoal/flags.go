package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/manifest"
)

// byteSize is a flag holding a size in bytes, written as a number with an
// optional unit: 8MiB, 512KiB, 1MB, 1048576.
type byteSize int64

var byteUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("want a positive size like 8MiB, 512KiB or 1048576")
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) String() string {
	switch n := int64(*b); {
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	default:
		return strconv.FormatInt(n, 10)
	}
}

func (b *byteSize) Type() string { return "size" }

// maxBodyLimit is the largest --max-body: a body travels in one NATS
// message, and NATS caps messages at 64 MiB; 1 MiB is kept for headers.
const maxBodyLimit = 63 << 20

func checkMaxBody(b byteSize) error {
	if b > maxBodyLimit {
		return fmt.Errorf("--max-body %s: at most 63MiB, since a body travels in one NATS message (64 MiB at most)", b.String())
	}
	return nil
}

// natsFlags are the flags of commands that connect to a NATS server.
type natsFlags struct {
	url   string
	creds string
}

func (f *natsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "nats", nats.DefaultURL, "NATS server URL; several, comma-separated, for a cluster (user:password@ in the URL for plain auth)")
	fs.StringVar(&f.creds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for decentralized auth")
}

// connect opens a NATS connection that keeps reconnecting and logs its
// state changes; name shows in the server's connection list.
func (f *natsFlags) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "connection", name, "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "connection", name, "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("nats error", "connection", name, "subject", subject, "error", err)
		}),
	}
	if f.creds != "" {
		opts = append(opts, nats.UserCredentials(f.creds))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(f.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redact(f.url), err)
	}
	return nc, nil
}

// redact hides passwords in NATS URLs before they reach a log or an error.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				parts[i] = u[:scheme+3] + "***@" + u[at+1:]
			} else {
				parts[i] = "***@" + u[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// loadManifest loads a manifest against the built-ins of this binary.
func loadManifest(path string) (*manifest.Manifest, error) {
	m, err := manifest.Load(path, manifest.Options{Builtins: functions.Names()})
	if err != nil {
		var errs manifest.Errors
		if errors.As(err, &errs) {
			return nil, fmt.Errorf("%s has %d problem(s):\n%w", path, len(errs), err)
		}
		return nil, err
	}
	return m, nil
}
