/**
 * Which network-boot client sent a DHCP message, and what it should boot. Pure: no I/O, no clock.
 *
 * Client kinds (provisioning facts §1, "What iPXE sends"):
 * - **iPXE**: sends option 175 (its feature flags) and option 77 = `iPXE` (a bare string). Either marks it;
 *   175 is the more robust sign. iPXE gets the HTTP URL of its per-machine script.
 * - **PXE ROM** (vendor firmware, SeaBIOS/OVMF's own PXE): option 60 starts with `PXEClient`, no 175/77.
 *   It gets an iPXE binary over TFTP, chosen by option 93 (RFC 4578 §2.1).
 * - **UEFI HTTP boot**: option 60 starts with `HTTPClient` (arch 16 = x64 HTTP). It gets a URL to an EFI binary.
 * - anything else is not a network-boot client: a full server gives it an address and no boot answer,
 *   a proxyDHCP server ignores it.
 *
 * The boot file is chosen by an explicit table keyed by architecture, first match wins — never by the order
 * of configuration lines (trap 4: a UEFI client given `undionly.kpxe` lost 195 s).
 */
import {
  clientArch,
  clientUuid,
  ipxeOptions,
  macOf,
  userClasses,
  vendorClass,
  type DhcpPacket,
} from './packet.js';

/** RFC 4578 §2.1 / IANA "Processor Architecture Types" values takt distinguishes. */
export const Arch = {
  BIOS: 0,
  EFI_IA32: 6,
  EFI_BC: 7, // EFI byte code in RFC 4578, x86-64 UEFI in practice (OVMF and iPXE send 7)
  EFI_X64: 9,
  EFI_X64_HTTP: 16,
} as const;

/** Which firmware family a client runs. */
export type Firmware = 'bios' | 'efi-ia32' | 'efi-x64' | 'unknown';
/** What kind of network-boot client it is. */
export type ClientKind = 'ipxe' | 'pxe' | 'http' | 'none';

/** Everything takt reads from a client's DHCP message to decide its boot answer. */
export interface BootClient {
  kind: ClientKind;
  firmware: Firmware;
  /** First architecture of option 93, if sent. */
  arch?: number;
  /** `aa:bb:cc:dd:ee:ff`. */
  mac: string;
  /** SMBIOS UUID from option 97, lowercase, if sent. */
  uuid?: string;
  /** Option 60 as sent. */
  vendorClass?: string;
}

/**
 * Where boot files are and how iPXE scripts are addressed. TFTP file names are relative to the TFTP root
 * (see `src/provision/tftp/`). Defaults: Debian's `ipxe` package (`dpkg -L ipxe`).
 */
export interface BootFiles {
  /** Served to arch 0 (BIOS) PXE ROMs. Debian: `undionly.kpxe` (uses the ROM's UNDI driver). */
  bios: string;
  /** Served to arch 7/9 (x86-64 UEFI) PXE ROMs. Debian: `ipxe.efi` (own drivers) or `snponly.efi` (firmware's SNP). */
  efiX64: string;
  /** Served to arch 6 (ia32 UEFI). Debian ships none; unset means such clients get no boot answer. */
  efiIa32?: string;
  /**
   * URL template of an iPXE client's per-machine script. `{mac}` (aa-bb-cc-dd-ee-ff), `{uuid}` (or empty),
   * `{firmware}` (bios/efi-x64/…) are filled in here; iPXE itself also expands `${...}` settings in it.
   */
  scriptUrl: string;
  /** URL template of the EFI binary for UEFI HTTP boot clients (arch 16); same placeholders. */
  httpBootUrl?: string;
}

/** Debian `ipxe` package locations (checked with `dpkg -L ipxe` on Debian 12). */
export const DEBIAN_IPXE_ROOT = '/usr/lib/ipxe';

/** Default boot files (relative to `DEBIAN_IPXE_ROOT`) with a script URL under `base` (`http://host:port`). */
export function defaultBootFiles(base: string): BootFiles {
  return {
    bios: 'undionly.kpxe',
    efiX64: 'ipxe.efi',
    scriptUrl: `${base.replace(/\/+$/, '')}/boot/{mac}.ipxe?uuid={uuid}&firmware={firmware}`,
  };
}

/** Firmware family of an RFC 4578 architecture number. */
export function firmwareOf(arch: number | undefined): Firmware {
  switch (arch) {
    case Arch.BIOS:
      return 'bios';
    case Arch.EFI_IA32:
      return 'efi-ia32';
    case Arch.EFI_BC:
    case Arch.EFI_X64:
    case Arch.EFI_X64_HTTP:
      return 'efi-x64';
    default:
      return 'unknown';
  }
}

/** Reads a DHCP message's boot-client identity (kind, firmware, MAC, UUID). */
export function classifyClient(p: DhcpPacket): BootClient {
  const vc = vendorClass(p);
  const arch = clientArch(p)?.[0];
  const ipxe = ipxeOptions(p) !== undefined || (userClasses(p) ?? []).includes('iPXE');
  let kind: ClientKind = 'none';
  if (vc?.startsWith('HTTPClient') || arch === Arch.EFI_X64_HTTP) kind = 'http';
  else if (ipxe) kind = 'ipxe';
  else if (vc?.startsWith('PXEClient')) kind = 'pxe';
  const c: BootClient = { kind, firmware: firmwareOf(arch), mac: macOf(p) };
  if (arch !== undefined) c.arch = arch;
  const uuid = clientUuid(p);
  if (uuid) c.uuid = uuid;
  if (vc !== undefined) c.vendorClass = vc;
  return c;
}

/** What a client is told to boot. */
export type BootAnswer =
  | { kind: 'tftp'; file: string }
  | { kind: 'http'; url: string }
  | { kind: 'none'; reason: string };

function fill(template: string, c: BootClient): string {
  return template
    .replaceAll('{mac}', c.mac.replaceAll(':', '-'))
    .replaceAll('{uuid}', c.uuid ?? '')
    .replaceAll('{firmware}', c.firmware);
}

/**
 * The boot answer for a client: iPXE → its script URL; PXE ROM → the iPXE binary for its architecture over
 * TFTP; UEFI HTTP boot → the EFI binary's URL; otherwise none, with the reason (for the server's log).
 */
export function bootAnswer(c: BootClient, files: BootFiles): BootAnswer {
  switch (c.kind) {
    case 'ipxe':
      return { kind: 'http', url: fill(files.scriptUrl, c) };
    case 'http':
      return files.httpBootUrl
        ? { kind: 'http', url: fill(files.httpBootUrl, c) }
        : { kind: 'none', reason: 'UEFI HTTP boot client, and no httpBootUrl is configured' };
    case 'pxe':
      switch (c.arch) {
        case Arch.BIOS:
          return { kind: 'tftp', file: files.bios };
        case Arch.EFI_BC:
        case Arch.EFI_X64:
          return { kind: 'tftp', file: files.efiX64 };
        case Arch.EFI_IA32:
          return files.efiIa32
            ? { kind: 'tftp', file: files.efiIa32 }
            : { kind: 'none', reason: 'ia32 UEFI client (arch 6), and no efiIa32 boot file is configured' };
        case undefined:
          // PXE 2.1 clients must send option 93; a ROM without it predates RFC 4578 and is BIOS.
          return { kind: 'tftp', file: files.bios };
        default:
          return { kind: 'none', reason: `PXE client with architecture ${c.arch}, which takt has no boot file for` };
      }
    default:
      return { kind: 'none', reason: 'not a network-boot client (no PXEClient/HTTPClient vendor class, no iPXE options)' };
  }
}
