package main

import (
	"github.com/urfave/cli/v2"
)

// serveCommand runs the Image API v2 server: a caching proxy in front of a real Glance when
// --upstream is given (serve_proxy.go), the embedded store otherwise (serve_store.go).
// Every flag can also come from the environment as GLIMPSE_<FLAG> (upper case, dashes as
// underscores).
func serveCommand() *cli.Command {
	env := func(name string) []string { return []string{"GLIMPSE_" + envName(name)} }
	str := func(name, value, usage string) cli.Flag {
		return &cli.StringFlag{Name: name, Value: value, Usage: usage, EnvVars: env(name)}
	}
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the OpenStack Image API v2: a caching proxy with --upstream, an embedded store without",
		Flags: []cli.Flag{
			// both modes
			str("listen", "127.0.0.1:9292", "address to serve the Image API on (`HOST:PORT`)"),
			str("log-format", "text", "log format: `text` or json"),
			str("log-level", "info", "log `LEVEL`: debug, info, warn, error"),
			str("allow-format", "", "accept uploads only in these disk formats (`LIST`, comma-separated)"),
			str("max-image-size", "", "refuse uploads whose size or virtual size is above `SIZE`"),
			// proxy mode
			str("upstream", "", "URL of the Glance to cache (`URL`); without it glimpse is the image service itself"),
			str("cache-dir", "", "proxy: directory for cached image data (`DIR`)"),
			str("cache-size", "10G", "proxy: most bytes of image data to keep (`SIZE`)"),
			str("admin-listen", "127.0.0.1:9293", "proxy: address of the cache admin API (`HOST:PORT`; empty turns it off)"),
			&cli.DurationFlag{Name: "auth-ttl", Value: 10e9, Usage: "proxy: how long an upstream's yes to a caller is trusted", EnvVars: env("auth-ttl")},
			&cli.IntFlag{Name: "max-fills", Value: 4, Usage: "proxy: prefetches running at once", EnvVars: env("max-fills")},
			str("upstream-token", "", "proxy: X-Auth-Token for prefetches (`TOKEN`)"),
			&cli.StringSliceFlag{Name: "upstream-header", Usage: "proxy: a header sent with prefetches (`NAME:VALUE`, repeatable)", EnvVars: env("upstream-header")},
			// store mode
			str("data-dir", "./var", "store: directory for the database and the image data (`DIR`)"),
			str("auth", "none", "store: identity: `none` (every caller is admin), headers (trust X-Identity-Status and friends), tokens"),
			str("token-file", "", "store: with --auth tokens, the `FILE` mapping tokens to project, user and roles"),
		},
		Action: func(c *cli.Context) error {
			if c.String("upstream") != "" {
				return serveProxy(c)
			}
			return serveStore(c)
		},
	}
}

func envName(flag string) string {
	b := []byte(flag)
	for i, ch := range b {
		switch {
		case ch == '-':
			b[i] = '_'
		case ch >= 'a' && ch <= 'z':
			b[i] = ch - 'a' + 'A'
		}
	}
	return string(b)
}
