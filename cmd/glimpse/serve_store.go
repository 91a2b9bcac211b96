package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"glimpse/inspect"
	"glimpse/store"
)

// storeShutdownTimeout is how long a stopping store waits for requests in flight (uploads
// of large images take a while; a client cut off mid-upload finds its image queued).
const storeShutdownTimeout = 30 * time.Second

// serveStore runs the embedded store: glimpse as the Image API v2 itself.
func serveStore(c *cli.Context) error {
	logger, err := storeLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return cli.Exit("serve: "+err.Error(), 1)
	}
	cfg := store.Config{DataDir: c.String("data-dir"), Logger: logger}
	switch mode := c.String("auth"); mode {
	case "none":
		cfg.Auth = store.AuthNone{}
	case "headers":
		cfg.Auth = store.AuthHeaders{}
	case "tokens":
		if c.String("token-file") == "" {
			return cli.Exit("serve: --auth tokens needs --token-file", 1)
		}
		if cfg.Auth, err = store.LoadTokenFile(c.String("token-file")); err != nil {
			return cli.Exit("serve: --token-file: "+err.Error(), 1)
		}
	default:
		return cli.Exit(fmt.Sprintf("serve: --auth %q: must be none, headers or tokens", mode), 1)
	}
	if s := c.String("allow-format"); s != "" {
		if cfg.Policy.AllowFormats, err = inspect.ParseFormatList(s); err != nil {
			return cli.Exit("serve: --allow-format: "+err.Error(), 1)
		}
	}
	if s := c.String("max-image-size"); s != "" {
		n, err := parseSize(s)
		if err != nil || n <= 0 {
			return cli.Exit(fmt.Sprintf("serve: --max-image-size %q: not a size", s), 1)
		}
		cfg.MaxImageSize, cfg.Policy.MaxVirtualSize = n, n
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registry = reg
	st, err := store.New(cfg)
	if err != nil {
		return cli.Exit("serve: "+err.Error(), 1)
	}
	defer st.Close()

	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return cli.Exit("serve: "+err.Error(), 1)
	}
	srv := &http.Server{
		Handler:           st.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("glimpse store serving the Image API v2", "url", "http://"+ln.Addr().String(),
		"data_dir", cfg.DataDir, "auth", c.String("auth"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return cli.Exit("serve: "+err.Error(), 1)
	case <-c.Context.Done():
	}
	logger.Info("stopping: waiting for requests in flight", "timeout", storeShutdownTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), storeShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("shutdown cut requests short", "err", err)
		srv.Close()
	}
	logger.Info("stopped")
	return nil
}

// storeLogger builds the server's slog logger from --log-format and --log-level.
func storeLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: must be debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: must be text or json", format)
}
