/**
 * Base64 <-> bytes without depending on Node's Buffer, so the protocol layer also runs where only
 * the web platform exists (atob/btoa are global in Node 16+ and in browsers).
 */
export declare function bytesToBase64(bytes: Uint8Array): string;
export declare function base64ToBytes(text: string): Uint8Array;
//# sourceMappingURL=base64.d.ts.map