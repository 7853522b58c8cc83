// Package openstack is ferry's REST side: the Placement calls a compute host
// makes at the end of a live migration, and in companion mode the Neutron
// port-binding calls that move a guest's network with it. It is the only
// importer of gophercloud.
package openstack
