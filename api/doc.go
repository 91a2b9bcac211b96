// Package api holds the OpenStack Image API v2 wire types that the proxy and the store
// share: the image and member JSON, Glance's error bodies, the version document. Both
// servers speak the API exactly as Glance (OpenStack Zed) does, so that glanceclient,
// gophercloud and scripts work unchanged against either.
package api
