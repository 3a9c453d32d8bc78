// Package broker runs the NATS server embedded in `shoal up`, the
// single-machine default: JetStream on, its store under the data directory,
// listening on loopback, logging through log/slog.
//
// Across machines Shoal uses an ordinary NATS cluster instead, and this
// package is not involved.
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultAddr is where the embedded server listens unless told otherwise.
const DefaultAddr = "127.0.0.1:4222"

// Config configures an embedded NATS server.
type Config struct {
	// Addr is host:port to listen on; port 0 picks a free port.
	Addr string
	// DataDir holds the server's state; JetStream stores under
	// DataDir/jetstream (nats-server adds the last element).
	DataDir string
	// MaxPayload is the largest message the server accepts, headers
	// included; 0 keeps the NATS default (1 MiB).
	MaxPayload int
	// Users are the identities allowed to connect, with their
	// permissions (see [Credentials.Users]); none leaves the server open
	// to anyone, which only tests do.
	Users []*server.NkeyUser
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger
}

// Server is a running embedded NATS server.
type Server struct {
	ns         *server.Server
	maxPayload int
}

// readyTimeout bounds how long Start waits for the server to accept
// connections.
const readyTimeout = 10 * time.Second

// Start starts an embedded NATS server and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
	host, portText, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: listen address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("embedded nats: listen address %q: invalid port", cfg.Addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as "the default port"
	}
	if cfg.DataDir == "" {
		return nil, errors.New("embedded nats: a data directory is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: create store directory: %w", err)
	}
	opts := &server.Options{
		ServerName: "shoal",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		MaxPayload: int32(cfg.MaxPayload),
		Nkeys:      cfg.Users,
		// The shoal process owns signals and shuts the server down itself.
		NoSigs: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	adapter := &slogAdapter{log: logger, fatal: make(chan string, 1)}
	ns.SetLogger(adapter, false, false)
	go ns.Start()
	for deadline := time.Now().Add(readyTimeout); !ns.ReadyForConnections(100 * time.Millisecond); {
		select {
		case msg := <-adapter.fatal: // e.g. the port is taken
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats: not ready to accept connections on %s after %s", cfg.Addr, readyTimeout)
		}
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: JetStream did not start (store under %s); see the log above", cfg.DataDir)
	}
	return &Server{ns: ns, maxPayload: int(opts.MaxPayload)}, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// MaxPayload is the largest message the server accepts; 0 means the NATS
// default.
func (s *Server) MaxPayload() int { return s.maxPayload }

// StoreDir is where JetStream keeps its data.
func (s *Server) StoreDir() string { return s.ns.StoreDir() }

// Shutdown stops the server, closing every client connection, and waits
// until it has stopped.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// slogAdapter feeds nats-server's log into slog. The server's start-up
// banner is notice-level and would drown Shoal's one line per component, so
// notices go to debug; warnings and errors keep their level.
type slogAdapter struct {
	log *slog.Logger
	// fatal receives the first fatal error, which ends start-up.
	fatal chan string
}

func (a *slogAdapter) Noticef(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Warnf(format string, v ...any) {
	if strings.HasPrefix(format, "Maximum payloads over") {
		// Shoal raises max_payload on purpose to fit its body limit
		// (8 MiB by default); the warning would repeat on every start.
		a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
		return
	}
	a.log.Warn(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Errorf(format string, v ...any) {
	a.log.Error(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.log.Error(msg, "component", "nats", "fatal", true)
	select {
	case a.fatal <- msg:
	default:
	}
}

func (a *slogAdapter) Debugf(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Tracef(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats", "trace", true)
}
