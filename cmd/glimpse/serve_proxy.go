package main

import "github.com/urfave/cli/v2"

// Placeholder: the caching proxy lands here.
func serveProxy(c *cli.Context) error { return cli.Exit("serve --upstream: not implemented yet", 1) }
