#!/usr/bin/env python3
"""Host simulation of fp8_mlp_gelu's rounding (core/ops/fp8.cc), for the tolerances of
core/ops/fp8_fused_cuda_test.cc: bf16 inputs, per-tensor current scaling (scale = fp8_max / amax in
f32), e4m3 x / w1 / h / w2, e5m2 dY / dpre (round to nearest even with subnormals, saturating),
bf16 GEMM outputs, the GELU in the epilogue on the f32 GEMM result. Prints the largest
||err|| / ||ref|| against f64 over the seeds, then the fused path against the composed one (GELU
of the bf16-rounded pre). Needs numpy (the system /usr/bin/python3 has it).
  /usr/bin/python3 scripts/fp8_mlp_error_sim.py M C H C2 SEEDS   (the test: 192 320 1040 320 30)
"""
import numpy as np, sys
def bf16(a):
    a=np.asarray(a,dtype=np.float32); u=a.view(np.uint32).astype(np.uint64)
    u=(u+0x7fff+((u>>16)&1))&0xffff0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)
def fp8(v, m, emin, mx):
    a=np.abs(v); e=np.floor(np.log2(np.maximum(a,1e-300))); e=np.maximum(e,emin)
    step=2.0**(e-m); q=np.round(v/step)*step
    return np.clip(q,-mx,mx)
def quant(x, kind):
    m,emin,mx = (3,-6,448.) if kind=='e4' else (2,-14,57344.)
    amax=np.abs(x).max(); s=np.float32(mx)/np.float32(amax)
    xs=(x.astype(np.float32)*s).astype(np.float64)
    return fp8(xs,m,emin,mx), 1.0/float(s)
def gelu(p): return 0.5*p*(1+np.tanh(np.sqrt(2/np.pi)*(p+0.044715*p**3)))
def dgelu(p):
    t=np.tanh(np.sqrt(2/np.pi)*(p+0.044715*p**3)); di=np.sqrt(2/np.pi)*(1+3*0.044715*p*p)
    return 0.5*(1+t)+0.5*p*(1-t*t)*di
def rel(a,b): return np.linalg.norm(a-b)/np.linalg.norm(b)
M,C,H,C2=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
worst={}
for seed in range(int(sys.argv[5])):
    r=np.random.default_rng(seed)
    x=bf16(r.normal(0,1,(M,C))); w1=bf16(r.normal(0,1/np.sqrt(C),(H,C))); b1=bf16(r.normal(0,.5,H))
    w2=bf16(r.normal(0,1/np.sqrt(H),(C2,H))); b2=bf16(r.normal(0,.5,C2)); gy=bf16(r.normal(0,1,(M,C2)))
    # exact
    pre=x@w1.T+b1; h=gelu(pre); y=h@w2.T+b2
    dh=gy@w2; dpre=dh*dgelu(pre); ref=dict(y=y,dx=dpre@w1,dw1=dpre.T@x,db1=dpre.sum(0),dw2=gy.T@h,db2=gy.sum(0))
    # fp8
    xq,xd=quant(x,'e4'); w1q,w1d=quant(w1,'e4'); w2q,w2d=quant(w2,'e4')
    pf=(xq@w1q.T)*xd*w1d+b1; pre8=bf16(pf); h8=bf16(gelu(pf))
    hq,hd=quant(h8,'e4'); y8=bf16((hq@w2q.T)*hd*w2d+b2)
    gq,gd=quant(gy,'e5'); dh8=bf16((gq@w2q)*gd*w2d); dp8=bf16(dh8*dgelu(pre8))
    db1=dp8.sum(0); dq,dd=quant(dp8,'e5')
    got=dict(y=y8,dx=bf16((dq@w1q)*dd*w1d),dw1=bf16((dq.T@xq)*dd*xd),db1=db1,dw2=bf16((gq.T@hq)*gd*hd),db2=gy.sum(0))
    for k in ref:
        worst[k]=max(worst.get(k,0),rel(got[k],ref[k]))
print({k:round(v,4) for k,v in worst.items()})
# fused vs composed (composed: GELU of the bf16 pre), on the last seed and over seeds
wc={}
for seed in range(int(sys.argv[5])):
    r=np.random.default_rng(seed)
    x=bf16(r.normal(0,1,(M,C))); w1=bf16(r.normal(0,1/np.sqrt(C),(H,C))); b1=bf16(r.normal(0,.5,H))
    w2=bf16(r.normal(0,1/np.sqrt(H),(C2,H))); b2=bf16(r.normal(0,.5,C2)); gy=bf16(r.normal(0,1,(M,C2)))
    xq,xd=quant(x,'e4'); w1q,w1d=quant(w1,'e4'); w2q,w2d=quant(w2,'e4'); gq,gd=quant(gy,'e5')
    pf=(xq@w1q.T)*xd*w1d+b1; pre8=bf16(pf)
    out={}
    for name,h8 in (('f',bf16(gelu(pf))),('c',bf16(gelu(pre8)))):
        hq,hd=quant(h8,'e4'); out[name]=dict(y=bf16((hq@w2q.T)*hd*w2d+b2), dw2=bf16((gq.T@hq)*gd*hd), hdiff=np.mean(h8!=bf16(gelu(pf))))
    for k in ('y','dw2'): wc[k]=max(wc.get(k,0),rel(out['f'][k],out['c'][k]))
    wc['h elements differing']=max(wc.get('h elements differing',0),out['c']['hdiff'])
print('fused vs composed', {k:round(v,4) for k,v in wc.items()})
