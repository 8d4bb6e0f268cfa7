// Package admin is the control channel between `relay serve` and the other
// subcommands: JSON requests over HTTP on the unix socket DATA/relay.sock.
//
// The server side knows nothing of queues or users; the relay registers one
// handler per operation. Errors keep their kind across the socket: a handler
// returning an error that wraps ErrNotFound or ErrUser reaches the client as
// the same kind, so the CLI can exit 1 with the message.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// SocketName is the socket's file name inside the data directory.
const SocketName = "relay.sock"

// Socket returns the socket path for a data directory.
func Socket(dataDir string) string { return filepath.Join(dataDir, SocketName) }

// Error kinds that survive the trip over the socket.
var (
	ErrNotFound = errors.New("not found")
	ErrUser     = errors.New("request refused")
	// ErrNoServer means nothing listens on the socket: the CLI then works
	// on the database directly where it can.
	ErrNoServer = errors.New("no running server")
)

// Handler serves one operation. req is the raw JSON request; the result is
// encoded as JSON.
type Handler func(ctx context.Context, req json.RawMessage) (any, error)

// Server is the admin API listener.
type Server struct {
	mux  *http.ServeMux
	http *http.Server
	log  *slog.Logger
	// closing ends the streams (tail -f) at Shutdown, which would
	// otherwise wait for them until its deadline.
	closing  context.Context
	shutdown context.CancelFunc
}

// NewServer returns an admin server with no operations.
func NewServer(log *slog.Logger) *Server {
	s := &Server{mux: http.NewServeMux(), log: log}
	s.closing, s.shutdown = context.WithCancel(context.Background())
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Handle registers op.
func (s *Server) Handle(op string, h Handler) {
	s.mux.HandleFunc("POST /v1/"+op, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		res, err := h(r.Context(), body)
		s.reply(w, op, res, err)
	})
}

// HandleStream registers op as a streaming operation: h writes to w as long
// as it likes (one JSON value per line). An error ends the stream with a
// line {"error": "..."}.
func (s *Server) HandleStream(op string, h func(ctx context.Context, req json.RawMessage, w io.Writer) error) {
	s.mux.HandleFunc("POST /v1/"+op, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		fw := flushWriter{w: w, rc: http.NewResponseController(w)}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(s.closing, cancel)()
		if err := h(ctx, body, fw); err != nil && ctx.Err() == nil {
			s.log.Error("admin stream failed", "op", op, "error", err)
			// The status line is gone; the error is the stream's last
			// line, which the client reads as StreamError.
			json.NewEncoder(fw).Encode(map[string]string{"error": err.Error()})
		}
	})
}

// requestHeader carries an upload's JSON request, since the body is the
// upload itself.
const requestHeader = "Relay-Request"

// HandleUpload registers op as an upload: the request travels in a header
// and the body is streamed to h unread, so a large message is not held in
// memory on its way in.
func (s *Server) HandleUpload(op string, h func(ctx context.Context, req json.RawMessage, body io.Reader) (any, error)) {
	s.mux.HandleFunc("POST /v1/"+op, func(w http.ResponseWriter, r *http.Request) {
		res, err := h(r.Context(), json.RawMessage(r.Header.Get(requestHeader)), r.Body)
		s.reply(w, op, res, err)
	})
}

func (s *Server) reply(w http.ResponseWriter, op string, res any, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeErr(w, http.StatusNotFound, err)
	case errors.Is(err, ErrUser):
		writeErr(w, http.StatusUnprocessableEntity, err)
	case err != nil:
		s.log.Error("admin request failed", "op", op, "error", err)
		writeErr(w, http.StatusInternalServerError, err)
	default:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	}
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

func writeErr(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// Listen opens the socket at path (mode 0660), replacing a stale one left by
// a crashed server. It refuses when a live server answers there.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: another server is running", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

// Serve answers requests on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown()
	return s.http.Shutdown(ctx)
}

// Client calls a running server.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Call runs op with req and decodes the result into res (unless nil).
func (c *Client) Call(ctx context.Context, op string, req, res any) error {
	resp, err := c.post(ctx, op, req)
	if err != nil {
		return err
	}
	return decodeReply(resp, op, res)
}

func decodeReply(resp *http.Response, op string, res any) error {
	defer resp.Body.Close()
	if res == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(res); err != nil {
		return fmt.Errorf("admin %s: decode reply: %w", op, err)
	}
	return nil
}

// Stream runs a streaming op and returns the reply stream; the caller closes
// it.
func (c *Client) Stream(ctx context.Context, op string, req any) (io.ReadCloser, error) {
	resp, err := c.post(ctx, op, req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Upload runs an upload op: req goes in a header, body is streamed, and the
// result is decoded into res (unless nil).
func (c *Client) Upload(ctx context.Context, op string, req any, body io.Reader, res any) error {
	js, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://relay/v1/"+op, body)
	if err != nil {
		return err
	}
	hreq.Header.Set(requestHeader, string(js))
	resp, err := c.do(hreq, op)
	if err != nil {
		return err
	}
	return decodeReply(resp, op, res)
}

func (c *Client) post(ctx context.Context, op string, req any) (*http.Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://relay/v1/"+op, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	return c.do(hreq, op)
}

func (c *Client) do(hreq *http.Request, op string) (*http.Response, error) {
	resp, err := c.http.Do(hreq)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return nil, fmt.Errorf("%w at %s", ErrNoServer, c.path)
		}
		return nil, fmt.Errorf("admin %s: %w", op, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&e)
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, NotFound(errors.New(e.Error))
	case http.StatusUnprocessableEntity:
		return nil, UserError(errors.New(e.Error))
	default:
		return nil, fmt.Errorf("admin %s: server error: %s", op, e.Error)
	}
}

// NotFound marks err as ErrNotFound without changing its message.
func NotFound(err error) error { return &kindError{err, ErrNotFound} }

// UserError marks err as ErrUser without changing its message.
func UserError(err error) error { return &kindError{err, ErrUser} }

// kindError carries a message unchanged plus a kind for errors.Is.
type kindError struct {
	err  error
	kind error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.err, e.kind} }
