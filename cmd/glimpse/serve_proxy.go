package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"glimpse/cache"
	"glimpse/inspect"
	"glimpse/proxy"
)

// proxyShutdownTimeout is how long a stopping proxy lets downloads from committed entries
// finish; what is still running then is cut (the client sees a broken transfer).
const proxyShutdownTimeout = 30 * time.Second

// serveProxy runs glimpse as a caching proxy in front of the Glance at --upstream.
func serveProxy(c *cli.Context) error {
	fail := func(format string, a ...any) error { return cli.Exit("serve: "+fmt.Sprintf(format, a...), 1) }
	logger, err := storeLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return fail("%v", err)
	}
	up, err := url.Parse(c.String("upstream"))
	if err != nil || (up.Scheme != "http" && up.Scheme != "https") || up.Host == "" {
		return fail("--upstream %q: not an http(s) URL", c.String("upstream"))
	}
	dir := c.String("cache-dir")
	if dir == "" {
		return fail("--upstream needs --cache-dir")
	}
	size, err := parseSize(c.String("cache-size"))
	if err != nil || size <= 0 {
		return fail("--cache-size %q: not a size", c.String("cache-size"))
	}
	opts := []proxy.Option{proxy.WithLogger(logger), proxy.WithAuthTTL(c.Duration("auth-ttl")), proxy.WithMaxFills(c.Int("max-fills"))}
	var pol inspect.Policy
	if s := c.String("allow-format"); s != "" {
		if pol.AllowFormats, err = inspect.ParseFormatList(s); err != nil {
			return fail("--allow-format: %v", err)
		}
	}
	if s := c.String("max-image-size"); s != "" {
		n, err := parseSize(s)
		if err != nil || n <= 0 {
			return fail("--max-image-size %q: not a size", s)
		}
		pol.MaxVirtualSize = n
		opts = append(opts, proxy.WithMaxImageSize(n))
	}
	opts = append(opts, proxy.WithPolicy(pol))
	service := http.Header{}
	for _, hv := range c.StringSlice("upstream-header") {
		name, value, ok := strings.Cut(hv, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return fail("--upstream-header %q: want NAME:VALUE", hv)
		}
		service.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	opts = append(opts, proxy.WithServiceCredentials(c.String("upstream-token"), service))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts = append(opts, proxy.WithRegistry(reg))
	ch, err := cache.Open(dir, size, cache.WithLogger(logger), cache.WithRegisterer(reg))
	if err != nil {
		return fail("%v", err)
	}
	defer ch.Close()
	px, err := proxy.New(up, ch, opts...)
	if err != nil {
		return fail("%v", err)
	}
	defer px.Close()

	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return fail("%v", err)
	}
	errLog := slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	servers := []*http.Server{{Handler: px.Handler(), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}}
	listeners := []net.Listener{ln}
	adminURL := ""
	if a := c.String("admin-listen"); a != "" {
		aln, err := net.Listen("tcp", a)
		if err != nil {
			ln.Close()
			return fail("--admin-listen: %v", err)
		}
		if tcp, ok := aln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			logger.Warn("the cache admin API has no authentication and listens beyond loopback", "addr", aln.Addr().String())
		}
		servers = append(servers, &http.Server{Handler: px.AdminHandler(), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog})
		listeners = append(listeners, aln)
		adminURL = "http://" + aln.Addr().String()
	}
	logger.Info("glimpse proxy serving the Image API v2", "url", "http://"+ln.Addr().String(), "admin_url", adminURL,
		"upstream", up.String(), "cache_dir", dir, "cache_size", size)
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { errc <- srv.Serve(listeners[i]) }()
	}
	select {
	case err := <-errc:
		for _, srv := range servers {
			srv.Close()
		}
		return fail("%v", err)
	case <-c.Context.Done():
	}
	// Fills in progress are discarded first (their readers see a broken transfer, never a
	// half entry); then downloads from committed entries get the grace period.
	logger.Info("stopping: discarding fills in progress, waiting for downloads in flight", "timeout", proxyShutdownTimeout)
	px.Close()
	ch.Close()
	ctx, cancel := context.WithTimeout(context.Background(), proxyShutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("shutdown cut requests short", "err", err)
			srv.Close()
		}
	}
	logger.Info("stopped")
	return nil
}
