"""rtnetlink and namespace constants, declared once (values from the Linux uapi headers:
linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/neighbour.h,
linux/if.h, linux/sched.h, linux/nsfs.h). A plain module of ints: pyroute2 has them too,
but importing it costs start-up time on the CLI and CNI fast paths."""

# sockets and address families
NETLINK_ROUTE = 0
AF_INET = 2
AF_BRIDGE = 7
AF_INET6 = 10

# netlink message header (linux/netlink.h)
NLMSG_HDRLEN = 16  # struct nlmsghdr
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800

# rtnetlink message types (linux/rtnetlink.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28

# routes (struct rtmsg, rtattr)
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTPROT_STATIC = 4  # what pyroute2 and crossnet before its own marker used
# crossnet's own routes (crossnet.plan.resources.Route) carry this protocol number, as BIRD's
# carry 12 and Calico's 80: a route of the admin's (`ip route` says proto boot/static) is
# told from crossnet's in the kernel itself; `ip route` shows it as `proto 151`
RTPROT_CROSSNET = 151
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTN_LOCAL = 2
RTNH_F_ONLINK = 0x4
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5

# traffic control (struct tcmsg, linux/rtnetlink.h; linux/pkt_sched.h, linux/pkt_cls.h)
TCMSG_SIZE = 20
RTM_NEWQDISC, RTM_NEWTFILTER = 36, 44
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_CHAIN = 11  # a filter's chain (pyroute2 0.9 does not decode it)
TC_H_CLSACT = 0xFFFFFFF1  # the clsact qdisc's parent (TC_H_INGRESS) ...
TC_H_CLSACT_HANDLE = 0xFFFF0000  # ... and its handle (ffff:)
TC_INGRESS, TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # clsact's ingress / egress hooks (ffff:fff2, ffff:fff3)
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8  # cls_bpf's options
TCA_BPF_FLAG_ACT_DIRECT = 1  # direct-action: the program's return value is the verdict
ETH_P_ALL = 0x0003
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without NLA_F_NESTED / NLA_F_NET_BYTEORDER

# neighbours (struct ndmsg, linux/neighbour.h)
NDA_DST, NDA_LLADDR = 1, 2
NUD_FAILED = 0x20
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

# links (struct ifinfomsg, linux/if_link.h, linux/if.h)
IFF_UP = 0x1
IFF_NOARP = 0x80
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_NET_NS_FD, IFLA_EXT_MASK = 28, 29
IFLA_IFALIAS = 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3

# addresses (struct ifaddrmsg, linux/if_addr.h)
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NOPREFIXROUTE = 0x200

# namespaces (linux/sched.h, linux/nsfs.h)
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace file: its CLONE_NEW* type (Linux 4.11)
