// SPDX-License-Identifier: GPL-2.0
/* crossnet's tc eBPF host routing (datapath: ebpf), see docs/ebpf.md.
 *
 * Two classifier programs (direct action), one object, maps shared:
 *   cn_from_container  tc ingress of a container's host-side veth (packets FROM the
 *                      container): FIB lookup, then the FIB's MACs and bpf_redirect to the
 *                      egress device (underlay NIC, vxlan device), bpf_redirect_peer into a
 *                      local container, or bpf_redirect_neigh while the next hop is unresolved.
 *   cn_to_container    tc ingress of the underlay NIC (host-gw) or the vxlan device (vxlan:
 *                      the decapsulated packets) (packets TOWARDS a local container): FIB
 *                      lookup, then bpf_redirect_peer into the container, only when the FIB
 *                      target is a veth crossnet attached.
 * Anything else returns TC_ACT_OK: the kernel's stack handles it exactly as without
 * the programs (ARP, non-IPv4, IP options/fragments, TTL <= 1, destinations outside
 * the container network (masquerade), local delivery, unresolved neighbours, ...).
 * Configuration is in maps filled by crossnet (crossnet.ebpf.host), never compiled in.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* keep in sync with crossnet/ebpf/maps.py (CONFIG_FORMAT, COUNTERS, MAX_NETWORKS) */
#define CN_MAX_NETS 72 /* the top-level network + 64 named networks (docs/networks.md) */

/* one entry per container network of the host (key 0: the top-level one, then the
 * named networks; the first entry with mask 0 ends the list) */
struct cn_config {
	__u32 net;      /* container network address, network byte order */
	__u32 mask;     /* its netmask, network byte order (0: not configured, pass all) */
	__u32 underlay; /* ifindex of the underlay NIC */
	__u32 vxlan;    /* ifindex of the vxlan device, 0 if none */
};

enum {
	CN_REDIRECT_NEIGH = 0,
	CN_REDIRECT_PEER,
	CN_PASS_NOT_IPV4,
	CN_PASS_NOT_HOST,
	CN_PASS_OUTSIDE,
	CN_PASS_IP_OPTIONS,
	CN_PASS_TTL,
	CN_PASS_FIB,
	CN_PASS_TARGET,
	CN_PASS_MALFORMED,
	CN_PASS_SOURCE,
	CN_NCOUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CN_MAX_NETS);
	__type(key, __u32);
	__type(value, struct cn_config);
} cn_config SEC(".maps");

/* host-side veths of crossnet's containers (key: ifindex; value: the container's
 * address, network byte order): the only targets of bpf_redirect_peer and, with the
 * underlay/vxlan ifindexes, of bpf_redirect_neigh; and the only source address the
 * from-container program forwards from that veth (anything else takes the stack) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} cn_veths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CN_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} cn_stats SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *v = bpf_map_lookup_elem(&cn_stats, &idx);

	if (v)
		*v += 1;
	return verdict;
}

/* ifindex is the host veth of the container whose address is daddr: the only redirect
 * target among the veths (its container is in daddr's network, hence the source's) */
static __always_inline int veth_of(__u32 ifindex, __u32 daddr)
{
	__u32 *addr = bpf_map_lookup_elem(&cn_veths, &ifindex);

	return addr && *addr == daddr;
}

/* the container network holding daddr (NULL: none). Networks are isolated from each
 * other (docs/networks.md): a packet takes the fast path only when its source is in the
 * same network; anything across networks goes to the stack, where nftables drops it. */
static __always_inline struct cn_config *network_of(__u32 daddr)
{
	for (__u32 i = 0; i < CN_MAX_NETS; i++) {
		__u32 key = i;
		struct cn_config *cfg = bpf_map_lookup_elem(&cn_config, &key);

		if (!cfg || !cfg->mask)
			return NULL;
		if ((daddr & cfg->mask) == cfg->net)
			return cfg;
	}
	return NULL;
}

/* Common checks and the FIB lookup. Returns -1 and sets *verdict when the packet goes
 * to the stack; else the lookup's result with fib filled: BPF_FIB_LKUP_RET_SUCCESS
 * (next hop and its MAC known), or BPF_FIB_LKUP_RET_NO_NEIGH when no_neigh_ok (next hop
 * known, its MAC not resolved yet). */
static __always_inline int route(struct __sk_buff *skb, struct bpf_fib_lookup *fib,
				 struct cn_config **cfgp, int *verdict, int no_neigh_ok)
{
	struct cn_config *cfg;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *iph;
	long rc;

	*verdict = TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return count(CN_PASS_NOT_IPV4, -1);
	if (skb->pkt_type != PACKET_HOST)
		return count(CN_PASS_NOT_HOST, -1);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + sizeof(*eth) + sizeof(*iph) > data_end) {
		if (bpf_skb_pull_data(skb, sizeof(*eth) + sizeof(*iph)))
			return count(CN_PASS_MALFORMED, -1);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + sizeof(*eth) + sizeof(*iph) > data_end)
			return count(CN_PASS_MALFORMED, -1);
	}
	eth = data;
	iph = data + sizeof(*eth);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || iph->version != 4)
		return count(CN_PASS_NOT_IPV4, -1);
	cfg = network_of(iph->daddr);
	if (!cfg || (iph->saddr & cfg->mask) != cfg->net)
		return count(CN_PASS_OUTSIDE, -1);
	if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return count(CN_PASS_IP_OPTIONS, -1);
	if (iph->ttl <= 1)
		return count(CN_PASS_TTL, -1);

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = iph->tos;
	fib->l4_protocol = iph->protocol;
	fib->tot_len = 0; /* no MTU check: 64 KB GSO packets would get FRAG_NEEDED */
	fib->ipv4_src = iph->saddr;
	fib->ipv4_dst = iph->daddr;
	fib->ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && !(no_neigh_ok && rc == BPF_FIB_LKUP_RET_NO_NEIGH))
		return count(CN_PASS_FIB, -1);
	if (fib->ifindex == skb->ingress_ifindex)
		return count(CN_PASS_TARGET, -1);
	*cfgp = cfg;
	return rc;
}

/* the Ethernet header the FIB resolved (next hop's MAC, the egress device's own) */
static __always_inline int set_macs(struct __sk_buff *skb, const struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return 0;
}

/* what the kernel's forwarder does (ip_decrease_ttl) */
static __always_inline int decrease_ttl(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__u32 check;

	if ((void *)(iph + 1) > data_end)
		return -1;
	check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	iph->ttl--;
	return 0;
}

SEC("tc")
int cn_from_container(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib;
	struct cn_config *cfg = NULL;
	struct bpf_redir_neigh nh = {};
	__u32 in = skb->ingress_ifindex;
	__u32 *source;
	struct iphdr *iph;
	int local;
	int verdict, rc;

	rc = route(skb, &fib, &cfg, &verdict, 1);
	if (rc < 0 || !cfg)
		return verdict;
	/* only the container's own address: a spoofed source meets the stack's rules */
	iph = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(iph + 1) > (void *)(long)skb->data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	source = bpf_map_lookup_elem(&cn_veths, &in);
	if (!source || *source != iph->saddr)
		return count(CN_PASS_SOURCE, TC_ACT_OK);
	local = veth_of(fib.ifindex, iph->daddr);  /* a container of this host, of this network */
	if (fib.ifindex != cfg->underlay && (!cfg->vxlan || fib.ifindex != cfg->vxlan) && !local)
		return count(CN_PASS_TARGET, TC_ACT_OK);
	if (decrease_ttl(skb) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		/* the FIB resolved the next hop's MAC already: write it and hand the packet to
		 * the egress device (bpf_redirect_neigh would look the neighbour up again);
		 * a container on this host: straight into it (its veth peer's ingress) */
		if (set_macs(skb, &fib) < 0)
			return count(CN_PASS_MALFORMED, TC_ACT_OK);
		if (local) {
			count(CN_REDIRECT_PEER, 0);
			return bpf_redirect_peer(fib.ifindex, 0);
		}
		count(CN_REDIRECT_NEIGH, 0);
		return bpf_redirect(fib.ifindex, 0);
	}
	/* next hop not resolved yet: the kernel's neighbour code resolves it (ARP) */
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst; /* the next hop the FIB chose */
	count(CN_REDIRECT_NEIGH, 0);
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int cn_to_container(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib;
	struct cn_config *cfg = NULL;
	struct iphdr *iph;
	int verdict;

	if (route(skb, &fib, &cfg, &verdict, 0) < 0 || !cfg)
		return verdict;
	iph = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(iph + 1) > (void *)(long)skb->data_end)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	if (!veth_of(fib.ifindex, iph->daddr))
		return count(CN_PASS_TARGET, TC_ACT_OK);
	if (decrease_ttl(skb) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	/* the neighbour the FIB resolved: the container's MAC, from the host veth's */
	if (set_macs(skb, &fib) < 0)
		return count(CN_PASS_MALFORMED, TC_ACT_OK);
	count(CN_REDIRECT_PEER, 0);
	return bpf_redirect_peer(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
