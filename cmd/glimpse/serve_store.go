package main

import "github.com/urfave/cli/v2"

// Placeholder: the embedded store lands here.
func serveStore(c *cli.Context) error {
	return cli.Exit("serve: the embedded store is not implemented yet", 1)
}
