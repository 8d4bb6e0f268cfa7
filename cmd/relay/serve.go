package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/relay"
)

func serve(args []string, stderr io.Writer) error {
	cfg, pos, err := config.FromArgs("relay serve", args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return usagef("serve takes no arguments, got %q", pos)
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	srv, err := relay.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return srv.Run(ctx)
}

func newLogger(cfg config.Config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("log-level: %q is not debug, info, warn or error", cfg.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

func configCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return usagef("config: the only verb is check")
	}
	cfg, pos, err := config.FromArgs("relay config check", args[1:])
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return usagef("config check takes no arguments, got %q", pos)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("configuration is not valid:\n%w", err)
	}
	fmt.Fprintln(stdout, "configuration ok")
	return nil
}
